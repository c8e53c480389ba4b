"""`python -m runtime.bench`: teacher against student, latency and throughput, and the speed-up guard.

How it measures (why the figures can be trusted on a noisy, shared machine):

* Interleaving. Every round runs each model once on the same inputs, teacher and student alternately,
  and the order flips every call, so slow drift of the machine (other jobs, clock changes) and "who
  runs right after whom" effects hit both models alike.
* Warm-up rounds are run and discarded (allocator arenas, CUDA graph capture, lazy initialisation).
* Fair threads: both models get the same intra-op thread count (``--threads``, default: the cores this
  process may use), set on ONNX Runtime sessions and on torch.
* Latency percentiles (p50/p95/p99) are over single calls; throughput is sequences per second of the
  median round (median: robust to another job stealing the CPU for a moment), and the speed-up ratio is
  student throughput / teacher throughput at the same (batch, sequence) point.
* Real-length inputs (``--texts``): sentences of a data file, tokenised with the teacher's tokenizer,
  batched in file order and padded to each batch's longest member (dynamic padding), truncated to the
  largest ``--seq``. Such a point is labelled ``seq=texts``.
* Memory: each model is loaded in its own fresh process (forked from a fork server that has only
  imported the libraries), which runs every point once in increasing size. On CPU the figure is the
  growth of the process's peak RSS over its baseline after imports (Linux ``VmHWM``): that sees ONNX Runtime's native arenas, which ``tracemalloc`` cannot, and a fresh
  process keeps one model's memory from being counted in the other's. On CUDA it is
  ``torch.cuda.max_memory_allocated`` for torch, and the growth of used device memory for ONNX
  Runtime/TensorRT (their allocators keep their peak, so used-after-run is the peak).

Exit status: 0, or 1 when ``--check-speedup`` finds the ratio below the threshold, or 2 on bad input.
Scripts calling :func:`run_benchmark` with memory on need the ``if __name__ == "__main__":`` guard, as
multiprocessing requires.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ernie_common.env import library_versions, machine, usable_cpus
from ernie_common.errors import cli
from ernie_common.io import write_atomic, write_json_atomic, write_text_atomic
from ernie_common.tables import TableError, read_examples
from runtime.backends import BACKENDS
from runtime.bench import BenchError
from runtime.bench.models import ARCHS, PRECISIONS, CompiledRunner, ModelSpec, load_runner, parameter_count, vocab_size
from runtime.encoding import Encoder

ROLES = ("teacher", "student")
TEXTS = "texts"
DEFAULT_TOKENIZER = "bert-base-uncased"


# ------------------------------------------------------------------------------------------- inputs

@dataclass
class Point:
    """One (batch, sequence) setting: the list of batches one round runs through."""

    batch: int
    seq: int | str                      # a fixed length, or TEXTS for real-length dynamic padding
    batches: list[dict[str, np.ndarray]] = field(repr=False)

    @property
    def label(self) -> str:
        return f"batch={self.batch},seq={self.seq}"

    @property
    def sequences(self) -> int:
        return sum(len(b["input_ids"]) for b in self.batches)

    @property
    def size(self) -> int:
        return max(b["input_ids"].size for b in self.batches)

    @property
    def mean_length(self) -> float:
        return float(np.mean([b["attention_mask"].sum(axis=1).mean() for b in self.batches]))

    @property
    def padded_length(self) -> float:
        return float(np.mean([b["input_ids"].shape[1] for b in self.batches]))


def synthetic_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random in-vocabulary tokens, full attention: the fixed-shape case (no padding)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab // 2), vocab, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def read_texts(path: str | os.PathLike, column: str | None = None, limit: int | None = None) -> list:
    """``--texts``: sentences (or sentence pairs) of a TSV/CSV file with a header, or the lines of a text file."""
    try:
        texts = read_examples(path, column, limit, hint="pass --text-column NAME (two, comma-separated, for pairs)").texts
    except TableError as err:
        raise BenchError(f"--texts: {err}") from None
    if not texts:
        raise BenchError(f"--texts {path} holds no sentences")
    return texts


def load_tokenizer(name_or_dir: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_dir)
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot load tokenizer {name_or_dir!r} ({type(exc).__name__}): pass --tokenizer DIR, "
                         "a directory with tokenizer files (e.g. the teacher's model directory)") from None


def build_points(batches: Sequence[int], seqs: Sequence[int], vocab: int, texts: list | None = None,
                 tokenizer=None, seed: int = 0) -> list[Point]:
    points = [Point(b, s, [synthetic_batch(b, s, vocab, seed)]) for s in seqs for b in batches]
    if texts:  # file order, each batch padded to its own longest member, encoded as runtime.Classifier does
        encoder = Encoder(tokenizer, max(seqs), getattr(tokenizer, "name_or_path", "the tokenizer"))
        points += [Point(b, TEXTS, encoder.batches(texts, b)) for b in batches]
    return points


# ------------------------------------------------------------------------------------------- timing

@dataclass(frozen=True)
class Timing:
    warmup: int = 2           # rounds run and discarded
    iters: int = 20           # at most this many timed rounds per point...
    min_iters: int = 5        # ...at least this many...
    max_time: float = 45.0    # ...and no more once this many seconds of timed rounds have passed


def time_point(runners: dict[str, Callable], point: Point, timing: Timing) -> dict[str, dict]:
    """Run both models on ``point`` interleaved; return per-model call latencies and round times."""
    names = list(runners)
    calls = {n: [] for n in names}
    rounds = {n: [] for n in names}
    started = None
    for r in range(timing.warmup + timing.iters):
        if r == timing.warmup:
            started = time.perf_counter()
        spent = dict.fromkeys(names, 0.0)
        for i, batch in enumerate(point.batches):
            for name in (names if (r + i) % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                runners[name](batch)
                dt = time.perf_counter() - t0
                spent[name] += dt
                if r >= timing.warmup:
                    calls[name].append(dt)
        if r >= timing.warmup:
            for name in names:
                rounds[name].append(spent[name])
            done = r - timing.warmup + 1
            if done >= timing.min_iters and time.perf_counter() - started > timing.max_time:
                break
    return {n: {"calls": calls[n], "rounds": rounds[n]} for n in names}


def summarize(calls: Sequence[float], rounds: Sequence[float], sequences: int) -> dict:
    """Latency percentiles of single calls (ms) and throughput of the median round (sequences/s)."""
    ms = np.asarray(calls) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "throughput": float(sequences / np.median(rounds)), "rounds": len(rounds), "calls": len(calls)}


# ------------------------------------------------------------------------------------------- memory

def _rss_peak_mb(reset: bool = False) -> float:
    """This process's peak RSS. Linux: VmHWM of the current address space (``ru_maxrss`` would carry the
    parent's peak across fork+exec), optionally reset to the current RSS first; elsewhere ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if not status.is_file():
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB
    if reset:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # peak then includes the imports' transient peak: an over-estimate, never an under-estimate
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024


def _cuda_used_mb() -> float:
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / (1 << 20)


# Imported before the baseline (and preloaded by the fork server), so library code is not counted as model.
_PROBE_PRELOAD = ["onnxruntime", "torch", "transformers", "transformers.models.auto.modeling_auto",
                  "transformers.models.bert.modeling_bert", "runtime.bench.models"]


def _memory_probe(spec: ModelSpec, points: list[tuple[str, list[dict]]]) -> dict:
    """In a fresh process: load one model, run each point once (ascending size), report peak memory."""
    import importlib

    for name in _PROBE_PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # e.g. no onnxruntime in a torch-only install: nothing of it to count
            pass
    import torch

    cuda = spec.device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    base = _cuda_used_mb() if cuda else _rss_peak_mb(reset=True)
    runner, _ = load_runner(spec)
    out = {}
    for label, batches in points:
        for batch in batches:
            runner(batch)
        if not cuda:
            out[label] = {"kind": "cpu_peak_rss_growth", "mb": _rss_peak_mb() - base, "process_peak_mb": _rss_peak_mb()}
        elif spec.backend == "torch":
            out[label] = {"kind": "cuda_max_allocated", "mb": torch.cuda.max_memory_allocated() / (1 << 20)}
        else:
            out[label] = {"kind": "cuda_used_growth", "mb": _cuda_used_mb() - base}
    return out


def _probe_context():
    """A fork server where there is one: it imports the libraries once, then each probe is a fork of that
    clean, single-threaded process (fast, no CUDA context, no model); elsewhere a spawned process."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PROBE_PRELOAD)
    return ctx


def measure_memory(spec: ModelSpec, points: list[Point]) -> dict:
    """Peak memory of ``spec`` alone, per point label, measured in a fresh process."""
    ordered = [(p.label, p.batches) for p in sorted(points, key=lambda p: p.size)]
    with _probe_context().Pool(1) as pool:
        return pool.apply(_memory_probe, (spec, ordered))


# ------------------------------------------------------------------------------------------- running

def environment(threads: int | None) -> dict:
    """The machine, the thread count both models were given, and the versions of what ran them."""
    return {**machine(), "threads": threads,
            **library_versions(("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "tensorrt"))}


def run_benchmark(specs: dict[str, ModelSpec], points: list[Point], timing: Timing = Timing(),
                  memory: bool = True) -> dict:
    """Time teacher and student on every point; return the report (see :func:`write_report`)."""
    runners, models = {}, {}
    for role, spec in specs.items():
        runners[role], info = load_runner(spec)
        models[role] = {"name": spec.name, **spec.to_dict(), **info, "parameters": parameter_count(spec, info)}
    rows = []
    for point in points:
        times = time_point(runners, point, timing)
        row = {"batch": point.batch, "seq": point.seq, "sequences": point.sequences,
               "mean_length": point.mean_length, "padded_length": point.padded_length}
        for role in specs:
            row[role] = summarize(times[role]["calls"], times[role]["rounds"], point.sequences)
        row["ratio"] = row["student"]["throughput"] / row["teacher"]["throughput"]
        rows.append(row)
        print(f"  {point.label}: ratio {row['ratio']:.2f}x", file=sys.stderr, flush=True)
    del runners
    if memory:
        for role, spec in specs.items():
            per_point = measure_memory(spec, points)
            for row in rows:
                row[role]["memory"] = per_point[f"batch={row['batch']},seq={row['seq']}"]
    return {"environment": environment(specs["teacher"].threads), "models": models, "timing": timing.__dict__,
            "points": rows}


def find_point(report: dict, at: dict) -> dict:
    for row in report["points"]:
        if row["batch"] == at["batch"] and str(row["seq"]) == str(at["seq"]):
            return row
    raise BenchError(f"--at batch={at['batch']},seq={at['seq']} is not measured: add it to --batch/--seq")


def check_speedup(report: dict, threshold: float, at: dict) -> bool:
    row = find_point(report, at)
    passed = row["ratio"] >= threshold
    report["check"] = {"threshold": threshold, "at": at, "ratio": row["ratio"], "passed": passed}
    return passed


# ------------------------------------------------------------------------------------------- output

_COLUMNS = ("batch", "seq", "model", "p50 ms", "p95 ms", "p99 ms", "seq/s", "mem MB", "speed-up")


def format_table(report: dict) -> str:
    """A markdown table: one row per (point, model); the student row carries the speed-up."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---:|" * len(_COLUMNS)]
    for row in report["points"]:
        for role in ROLES:
            s = row[role]
            mem = s.get("memory", {}).get("mb")
            cells = [row["batch"], row["seq"], role, f"{s['p50_ms']:.2f}", f"{s['p95_ms']:.2f}",
                     f"{s['p99_ms']:.2f}", f"{s['throughput']:.1f}", "-" if mem is None else f"{mem:.0f}",
                     f"{row['ratio']:.2f}x" if role == "student" else ""]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def describe(report: dict) -> str:
    env = report["environment"]
    lines = [f"{role}: {m['name']} on {m['backend']} {m['precision']} {m['device']} "
             f"(providers {', '.join(m['providers'])}; {(m['parameters'] or 0) / 1e6:.2f}M parameters)"
             for role, m in report["models"].items()]
    onnxruntime = env.get("onnxruntime") or env.get("onnxruntime-gpu")
    lines.append(f"{env['date']}; {env.get('gpu') or env['cpu']}; {env['cores']} usable cores, "
                 f"{env['threads']} threads per model; torch {env['torch']}, onnxruntime {onnxruntime}")
    return "\n".join(lines)


def plot(report: dict, path: Path, threshold: float | None = None) -> Path:
    """Throughput against batch size for both models (log-log), and the speed-up ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, (ax_tp, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = dict(zip(ROLES, ("tab:blue", "tab:orange")))
    seqs = list(dict.fromkeys(row["seq"] for row in report["points"]))
    for seq, style in zip(seqs, ("-", "--", ":", "-.") * len(seqs)):
        rows = [r for r in report["points"] if r["seq"] == seq]
        batches = [r["batch"] for r in rows]
        for role in ROLES:
            ax_tp.plot(batches, [r[role]["throughput"] for r in rows], style, marker="o", color=colours[role],
                       label=f"{role}, seq={seq}")
        ax_ratio.plot(batches, [r["ratio"] for r in rows], style, marker="o", color="tab:green", label=f"seq={seq}")
    if threshold is not None:
        ax_ratio.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold:g}x")
    models = report["models"]
    ax_tp.set(xscale="log", yscale="log", xlabel="batch size", ylabel="sequences / s",
              title=f"{models['teacher']['name']} vs {models['student']['name']}")
    ax_ratio.set(xscale="log", xlabel="batch size", ylabel="student / teacher throughput",
                 title=f"{models['student']['backend']} {models['student']['precision']} "
                       f"{models['student']['device']}")
    ax_ratio.set_ylim(bottom=0)
    all_batches = sorted({r["batch"] for r in report["points"]})
    for ax in (ax_tp, ax_ratio):
        ax.set_xticks(all_batches, [str(b) for b in all_batches])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """bench.json (everything), bench.md (description + table), bench.png (plot); atomic writes."""
    out = Path(out_dir)
    threshold = report.get("check", {}).get("threshold")
    text = describe(report) + "\n\n" + format_table(report) + "\n"
    return {"json": write_json_atomic(out / "bench.json", report), "table": write_text_atomic(out / "bench.md", text),
            "plot": plot(report, out / "bench.png", threshold)}


# ------------------------------------------------------------------------------------------- CLI

def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,8,32")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,8,32")
    return values


def _at(text: str) -> dict:
    try:
        fields = dict(part.split("=", 1) for part in text.split(","))
        at = {"batch": int(fields.pop("batch")), "seq": fields.pop("seq")}
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not like batch=8,seq=128 (seq may be {TEXTS})")
    if fields:
        raise argparse.ArgumentTypeError(f"--at takes only batch and seq, not {', '.join(fields)}")
    at["seq"] = at["seq"] if at["seq"] == TEXTS else int(at["seq"])
    return at


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for role in ROLES:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument(f"--{role}", metavar="DIR", help="HF model directory or runtime.export directory")
        group.add_argument(f"--{role}-arch", choices=sorted(ARCHS), help="randomly initialised model of this shape")
    p.add_argument("--backend", choices=list(BACKENDS), default="onnxruntime")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--variant", help="ONNX variant to run (fp32, optimized, fp16, int8; export directories and "
                                     "random shapes alike; default: --precision)")
    p.add_argument("--batch", type=_int_list, default=[1, 8, 32], help="batch sizes, comma-separated")
    p.add_argument("--seq", type=_int_list, default=[128], help="fixed sequence lengths, comma-separated")
    p.add_argument("--texts", help="also time real sentences from this file (TSV/CSV with header, or text lines)")
    p.add_argument("--text-column", help="column of --texts to read, or two comma-separated for pairs "
                                         "(default: sentence, text, sentence1,sentence2, ...)")
    p.add_argument("--max-texts", type=int, default=512, help="use at most this many sentences")
    p.add_argument("--tokenizer", help=f"tokenizer for --texts (default: the teacher's, else {DEFAULT_TOKENIZER})")
    p.add_argument("--threads", type=int, default=usable_cpus(), help="intra-op threads, same for both")
    p.add_argument("--warmup", type=int, default=Timing.warmup, help="discarded rounds per point")
    p.add_argument("--iters", type=int, default=Timing.iters, help="at most this many timed rounds per point")
    p.add_argument("--min-iters", type=int, default=Timing.min_iters, help="at least this many timed rounds")
    p.add_argument("--max-time", type=float, default=Timing.max_time,
                   help="stop timing a point after this many seconds (once --min-iters rounds ran)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="torch on cuda: replay one captured CUDA graph per shape (default: on for torch+cuda)")
    p.add_argument("--compile", dest="compile_mode", choices=CompiledRunner.MODES,
                   help="torch back end: run through torch.compile in this mode (reduce-overhead: inductor + "
                        "CUDA graphs on cuda); replaces --cuda-graphs")
    p.add_argument("--pad-heads", action=argparse.BooleanOptionalAction, default=None,
                   help="widen attention heads to a multiple of 8, exact (default: on for cuda)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="measure each model's peak memory in a fresh process")
    p.add_argument("--out", default="bench_out", help="directory for bench.json, bench.md, bench.png")
    p.add_argument("--check-speedup", type=float, metavar="RATIO",
                   help="exit 1 when student/teacher throughput at --at is below RATIO")
    p.add_argument("--at", type=_at, help="point of --check-speedup, e.g. batch=8,seq=128 "
                                          "(default: batch=8 if measured, else the first, at the first --seq)")
    p.add_argument("--seed", type=int, default=0)
    return p


def specs_from_args(args) -> dict[str, ModelSpec]:
    cuda = args.device == "cuda"
    if args.compile_mode and args.backend != "torch":
        raise BenchError(f"--compile applies to the torch back end, not {args.backend}: add --backend torch")
    common = dict(backend=args.backend, device=args.device, precision=args.precision, threads=args.threads,
                  cuda_graphs=bool(args.cuda_graphs if args.cuda_graphs is not None else
                                   cuda and args.backend == "torch" and not args.compile_mode),
                  compile_mode=args.compile_mode,
                  pad_heads=bool(args.pad_heads if args.pad_heads is not None else cuda),
                  variant=args.variant, max_batch=max(args.batch), max_seq=max(args.seq))
    specs = {}
    for role in ROLES:
        arch = getattr(args, f"{role}_arch")
        specs[role] = ModelSpec(role, arch or getattr(args, role), bool(arch), **common)
    return specs


def points_from_args(args, specs: dict[str, ModelSpec]) -> list[Point]:
    vocabs = [v for v in (vocab_size(s) for s in specs.values()) if v]
    vocab = min(vocabs) if vocabs else 1000
    texts = tokenizer = None
    if args.texts:
        texts = read_texts(args.texts, args.text_column, args.max_texts)
        dirs = [s.source for s in specs.values() if not s.arch]
        tokenizer = load_tokenizer(args.tokenizer or (dirs[0] if dirs else DEFAULT_TOKENIZER))
    return build_points(args.batch, args.seq, vocab, texts, tokenizer, args.seed)


def default_at(args) -> dict:
    return {"batch": 8 if 8 in args.batch else args.batch[0], "seq": args.seq[0]}


def run_cli(args) -> int:
    specs = specs_from_args(args)
    at = args.at or default_at(args)
    if args.check_speedup is not None and (at["batch"] not in args.batch or
                                           (at["seq"] != TEXTS and at["seq"] not in args.seq) or
                                           (at["seq"] == TEXTS and not args.texts)):
        raise BenchError(f"--at batch={at['batch']},seq={at['seq']} is not in the grid: add it to --batch/--seq "
                         "(or --texts for seq=texts)")
    points = points_from_args(args, specs)
    timing = Timing(args.warmup, args.iters, min(args.min_iters, args.iters), args.max_time)
    report = run_benchmark(specs, points, timing, memory=args.memory)
    passed = check_speedup(report, args.check_speedup, at) if args.check_speedup is not None else True
    paths = write_report(report, args.out)
    print(describe(report) + "\n\n" + format_table(report))
    print(f"wrote {paths['table']}, {paths['json']}, {paths['plot']}")
    if "check" in report:
        c = report["check"]
        verdict = "PASS" if passed else "FAIL"
        print(f"speed-up check {verdict}: student/teacher throughput at batch={at['batch']},seq={at['seq']} "
              f"is {c['ratio']:.2f}x, threshold {c['threshold']:g}x")
    return 0 if passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser().parse_args(argv))


# the back ends' own argument checks raise plain ValueErrors
main = cli(main, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
