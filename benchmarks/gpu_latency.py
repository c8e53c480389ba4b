"""BERT-base shape against the ERNIE-Tiny student shape on a CUDA GPU: every engine, one command, one table.

    python benchmarks/gpu_latency.py [--batch 1,32,256] [--seq 128] [--engines NAME,...] [--texts FILE]
                                     [--budget-s SECONDS] [--goal 9.4] [--out bench_out/gpu]

Runs `runtime.bench` once per engine (randomly initialised models of the two shapes: speed does not depend on
weights), teacher and student interleaved on the same inputs, then writes ``gpu_latency.md`` (one summary
table: student/teacher speed-up and student throughput per engine and batch size, whether the speed-up goal
holds at batch >= 32, then each engine's full table), ``gpu_latency.json`` (rewritten after every engine, so
a run cut short keeps what it measured) and one ``<engine>/bench.{json,md,png}`` per engine. An engine this
machine cannot run (no TensorRT, no onnxruntime-gpu, no CUDA for CUDA graphs) is listed as skipped with the
reason before any model is built; engines not started within ``--budget-s`` are listed as skipped too.

Without a CUDA GPU it prints one ``skipped:`` line and exits 0, so it is safe to call anywhere; ``--device cpu``
(with small shapes, ``--teacher-arch bert-mini --student-arch tiny-26 --precision fp32``) rehearses the same
code on a CPU, as ``benchmarks/gpu_check.py --device cpu --tiny`` does.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's runtime/, also where the package is not installed (a GPU machine)
    sys.path.insert(0, str(REPO))

from ernie_common.io import write_json_atomic, write_text_atomic  # noqa: E402
from runtime.backends import BackendUnavailable, gpu_available  # noqa: E402
from runtime.bench.models import ARCHS, CompiledRunner  # noqa: E402

DEFAULT_TEXTS = REPO.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"
GOAL_MIN_BATCH = 32


@dataclass(frozen=True)
class Engine:
    """One column of the comparison: a back end and how it is driven (precision comes from --precision)."""

    name: str
    backend: str
    cuda_graphs: bool = False
    compiled: bool = False
    pad_heads: bool = False
    variant: str | None = None


ENGINES = (
    Engine("torch-eager", "torch"),
    Engine("torch-eager-padded-heads", "torch", pad_heads=True),
    Engine("torch-cuda-graphs-padded-heads", "torch", cuda_graphs=True, pad_heads=True),
    Engine("torch-compile-padded-heads", "torch", compiled=True, pad_heads=True),
    Engine("onnxruntime-cuda", "onnxruntime", variant="fp16"),
    Engine("onnxruntime-cuda-padded-heads", "onnxruntime", pad_heads=True, variant="fp16"),
    Engine("tensorrt-padded-heads", "tensorrt", pad_heads=True),
)


def unavailable(engine: Engine, device: str) -> str | None:
    """Why this machine cannot run ``engine`` (checked before any model is built or exported), or None."""
    cuda = device.startswith("cuda")
    if engine.cuda_graphs and not cuda:
        return "CUDA graphs need a CUDA GPU"
    if engine.backend == "onnxruntime":
        if not cuda:
            return "an ONNX Runtime CUDA engine (this run is on the CPU)"
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return (f"onnxruntime {onnxruntime.__version__} here lacks CUDAExecutionProvider "
                    "(onnxruntime-gpu is not installed)")
    if engine.backend == "tensorrt":
        from runtime.tensorrt import require_tensorrt

        try:
            require_tensorrt()
        except BackendUnavailable as exc:
            return str(exc)
    return None


def run_engine(engine: Engine, args, texts: list | None, tokenizer) -> dict:
    from runtime.bench import timing as bench
    from runtime.bench.models import ModelSpec

    common = dict(backend=engine.backend, device=args.device, precision=args.precision, threads=None,
                  cuda_graphs=engine.cuda_graphs, compile_mode=args.compile_mode if engine.compiled else None,
                  pad_heads=engine.pad_heads, variant=engine.variant, max_batch=max(args.batch),
                  max_seq=max(args.seq))
    specs = {"teacher": ModelSpec("teacher", args.teacher_arch, True, **common),
             "student": ModelSpec("student", args.student_arch, True, **common)}
    points = bench.build_points(args.batch, args.seq, 30522, texts, tokenizer)
    timing = bench.Timing(args.warmup, args.iters, min(args.iters, 10), args.max_time)
    report = bench.run_benchmark(specs, points, timing, memory=args.memory)
    bench.write_report(report, Path(args.out) / engine.name)
    return report


def goal_check(report: dict, goal: float) -> dict | None:
    """The smallest student/teacher speed-up at batch >= 32 (fixed-length points) against ``goal``."""
    rows = [r for r in report.get("points", []) if r["batch"] >= GOAL_MIN_BATCH and r["seq"] != "texts"]
    if not rows:
        return None
    worst = min(rows, key=lambda r: r["ratio"])
    return {"goal": goal, "min_ratio": worst["ratio"], "at": {"batch": worst["batch"], "seq": worst["seq"]},
            "met": worst["ratio"] >= goal}


def summary_table(results: dict[str, dict], batches: list[int], goal: float) -> str:
    """Rows: engines; columns: per batch size, speed-up (student seq/s) at the first fixed sequence length,
    then whether every batch >= 32 reaches ``goal``."""
    head = "| engine | " + " | ".join(f"batch {b}" for b in batches) + f" | >= {goal:g}x at batch >= 32 |"
    lines = [head, "|---|" + "---:|" * len(batches) + "---|"]
    for name, report in results.items():
        if "skipped" in report or "failed" in report:
            kind = "skipped" if "skipped" in report else "FAILED"
            lines.append(f"| {name} | {kind}: {report.get('skipped') or report['failed']} |" + " |" * len(batches))
            continue
        seq = report["points"][0]["seq"]
        rows = {r["batch"]: r for r in report["points"] if r["seq"] == seq}
        cells = [f"{rows[b]['ratio']:.2f}x ({rows[b]['student']['throughput']:,.0f}/s)" if b in rows else "-"
                 for b in batches]
        check = report.get("goal")
        verdict = "-" if check is None else f"{'yes' if check['met'] else 'no'} (min {check['min_ratio']:.2f}x)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def write_outputs(results: dict[str, dict], args, out: Path) -> str:
    """gpu_latency.json and .md as they stand (rewritten after every engine: a run cut short keeps both)."""
    from runtime.bench import timing as bench

    write_json_atomic(out / "gpu_latency.json", results)
    measured = [r for r in results.values() if "environment" in r]
    header = bench.describe(measured[0]).splitlines()[-1] if measured else ""
    shapes = f"{args.teacher_arch} vs {args.student_arch}"
    sections = [f"# GPU latency: {shapes} shapes, {args.precision}, {args.device}\n\n{header}\n",
                f"speed-up = student/teacher throughput at seq {args.seq[0]} (student sequences/s)\n",
                summary_table(results, args.batch, args.goal)]
    sections += [f"\n## {name}\n\n{bench.format_table(r)}" for name, r in results.items() if "points" in r]
    text = "\n".join(sections) + "\n"
    write_text_atomic(out / "gpu_latency.md", text)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a rehearsal of it)")
    p.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--teacher-arch", default="bert-base", choices=sorted(ARCHS))
    p.add_argument("--student-arch", default="ernie-tiny", choices=sorted(ARCHS))
    p.add_argument("--batch", default="1,32,256")
    p.add_argument("--seq", default="128")
    p.add_argument("--texts", default=str(DEFAULT_TEXTS) if DEFAULT_TEXTS.is_file() else None,
                   help="real sentences for dynamic-padding points ('' to skip; CUDA graphs and torch.compile "
                        "then capture/compile once per padded length)")
    p.add_argument("--max-texts", type=int, default=872)
    p.add_argument("--tokenizer", default="bert-base-uncased", help="tokenizer for --texts (hub id or directory)")
    p.add_argument("--engines", default=",".join(e.name for e in ENGINES))
    p.add_argument("--compile-mode", default="reduce-overhead", choices=CompiledRunner.MODES,
                   help="torch.compile mode of the compiled engine (max-autotune: minutes per shape)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--max-time", type=float, default=20.0, help="seconds of timed rounds per point, at most")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="peak memory of each model in a fresh process (two extra processes per engine)")
    p.add_argument("--budget-s", type=float, default=None, help="start no engine after this many seconds")
    p.add_argument("--goal", type=float, default=9.4, help="student/teacher speed-up to check at batch >= 32")
    p.add_argument("--out", default="bench_out/gpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device.startswith("cuda") and not gpu_available():
        print("skipped: no CUDA GPU visible (torch.cuda.is_available() is False); run on an NVIDIA GPU "
              "machine with a CUDA build of torch (or rehearse with --device cpu)")
        return 0
    from runtime.bench import timing as bench

    started = time.monotonic()
    args.batch = [int(b) for b in args.batch.split(",")]
    args.seq = [int(s) for s in args.seq.split(",")]
    known = {e.name for e in ENGINES}
    wanted = [n for n in args.engines.split(",") if n]
    if set(wanted) - known:
        print(f"error: unknown engine(s) {sorted(set(wanted) - known)}: choose from {', '.join(sorted(known))}",
              file=sys.stderr)
        return 2
    texts = tokenizer = None
    if args.texts:
        try:
            texts = bench.read_texts(args.texts, limit=args.max_texts)
            tokenizer = bench.load_tokenizer(args.tokenizer)
        except bench.BenchError as exc:
            print(f"note: no real-length points ({exc})", file=sys.stderr)
            texts = None
    out = Path(args.out)
    results: dict[str, dict] = {}
    text = ""
    for engine in (e for e in ENGINES if e.name in wanted):
        reason = unavailable(engine, args.device)
        if reason is None and args.budget_s is not None and time.monotonic() - started > args.budget_s:
            reason = f"not started: the {args.budget_s:g} s budget was spent"
        if reason:
            results[engine.name] = {"skipped": reason}
            print(f"== {engine.name}: skipped ({reason})", file=sys.stderr, flush=True)
        else:
            print(f"== {engine.name}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                report = run_engine(engine, args, texts, tokenizer)
                report["goal"] = goal_check(report, args.goal)
                report["seconds"] = round(time.monotonic() - t0, 1)
                results[engine.name] = report
            except (BackendUnavailable, ImportError, ValueError) as exc:
                results[engine.name] = {"skipped": str(exc).splitlines()[0]}
            except Exception as exc:  # noqa: BLE001 - one engine breaking on a new GPU must not lose the others
                results[engine.name] = {"failed": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:500]}
                print(f"== {engine.name}: FAILED ({results[engine.name]['failed']})", file=sys.stderr, flush=True)
        text = write_outputs(results, args, out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
