"""BERT-base shape against the ERNIE-Tiny student shape on a CUDA GPU: every engine, one command, one table.

    python benchmarks/gpu_latency.py [--batch 1,8,32,128,512] [--seq 128] [--texts ../shared/data/glue/SST-2/dev.tsv]
                                     [--out bench_out/gpu]

Runs `runtime.bench` once per engine configuration (randomly initialised models of the two shapes: speed
does not depend on weights), then writes ``gpu_latency.md`` (one summary table: student/teacher speed-up and
student throughput per engine and batch size, then each engine's full table), ``gpu_latency.json`` and one
``<engine>/bench.{json,md,png}`` per engine. An engine this machine cannot run (no TensorRT, no
onnxruntime-gpu) is listed as skipped with the reason. Without a CUDA GPU it prints one ``skipped:`` line
and exits 0, so it is safe to call anywhere.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.backends import BackendUnavailable, gpu_available
from runtime.io import write_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXTS = REPO.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"


@dataclass(frozen=True)
class Engine:
    """One column of the comparison: a back end and how it is driven."""

    name: str
    backend: str
    precision: str = "fp16"
    cuda_graphs: bool = False
    pad_heads: bool = False
    variant: str | None = None


ENGINES = (
    Engine("torch-fp16-eager", "torch"),
    Engine("torch-fp16-eager-padded-heads", "torch", pad_heads=True),
    Engine("torch-fp16-cuda-graphs-padded-heads", "torch", cuda_graphs=True, pad_heads=True),
    Engine("onnxruntime-cuda-fp16", "onnxruntime", variant="fp16"),
    Engine("onnxruntime-cuda-fp16-padded-heads", "onnxruntime", pad_heads=True, variant="fp16"),
    Engine("tensorrt-fp16-padded-heads", "tensorrt", pad_heads=True),
)


def run_engine(engine: Engine, args, texts: list | None, tokenizer) -> dict:
    from runtime import bench
    from runtime.bench_models import ModelSpec

    common = dict(backend=engine.backend, device="cuda", precision=engine.precision, threads=None,
                  cuda_graphs=engine.cuda_graphs, pad_heads=engine.pad_heads, variant=engine.variant,
                  max_batch=max(args.batch), max_seq=max(args.seq))
    specs = {"teacher": ModelSpec("teacher", "bert-base", True, **common),
             "student": ModelSpec("student", "ernie-tiny", True, **common)}
    points = bench.build_points(args.batch, args.seq, 30522, texts, tokenizer)
    timing = bench.Timing(args.warmup, args.iters, min(args.iters, 10), args.max_time)
    report = bench.run_benchmark(specs, points, timing, memory=True)
    bench.write_report(report, Path(args.out) / engine.name)
    return report


def summary_table(results: dict[str, dict], batches: list[int]) -> str:
    """Rows: engines; columns: per batch size, speed-up (student seq/s) at the first fixed sequence length."""
    head = "| engine | " + " | ".join(f"batch {b}" for b in batches) + " |"
    lines = [head, "|---|" + "---:|" * len(batches)]
    for name, report in results.items():
        if "skipped" in report:
            lines.append(f"| {name} | skipped: {report['skipped']} |" + " |" * (len(batches) - 1))
            continue
        rows = {r["batch"]: r for r in report["points"] if r["seq"] == report["points"][0]["seq"]}
        cells = [f"{rows[b]['ratio']:.2f}x ({rows[b]['student']['throughput']:,.0f}/s)" if b in rows else "-"
                 for b in batches]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", default="1,8,32,128,512")
    p.add_argument("--seq", default="128")
    p.add_argument("--texts", default=str(DEFAULT_TEXTS) if DEFAULT_TEXTS.is_file() else None,
                   help="real sentences for the dynamic-padding points ('' to skip)")
    p.add_argument("--max-texts", type=int, default=872)
    p.add_argument("--tokenizer", default="bert-base-uncased", help="tokenizer for --texts (hub id or directory)")
    p.add_argument("--engines", default=",".join(e.name for e in ENGINES))
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--max-time", type=float, default=20.0)
    p.add_argument("--out", default="bench_out/gpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not gpu_available():
        print("skipped: no CUDA GPU visible (torch.cuda.is_available() is False); run on an NVIDIA GPU "
              "machine with a CUDA build of torch")
        return 0
    from runtime import bench

    args.batch = [int(b) for b in args.batch.split(",")]
    args.seq = [int(s) for s in args.seq.split(",")]
    wanted = set(args.engines.split(","))
    texts = tokenizer = None
    if args.texts:
        try:
            texts = bench.read_texts(args.texts, limit=args.max_texts)
            tokenizer = bench.load_tokenizer(args.tokenizer)
        except bench.BenchError as exc:
            print(f"note: no real-length points ({exc})", file=sys.stderr)
            texts = None
    results: dict[str, dict] = {}
    for engine in (e for e in ENGINES if e.name in wanted):
        print(f"== {engine.name}", file=sys.stderr, flush=True)
        try:
            results[engine.name] = run_engine(engine, args, texts, tokenizer)
        except (BackendUnavailable, ImportError, ValueError) as exc:
            results[engine.name] = {"skipped": str(exc).splitlines()[0]}
    measured = [r for r in results.values() if "environment" in r]
    header = bench.describe(measured[0]).splitlines()[-1] if measured else ""
    sections = [f"# GPU latency: bert-base vs ernie-tiny shapes\n\n{header}\n",
                f"speed-up = student/teacher throughput at seq {args.seq[0]} (student sequences/s)\n",
                summary_table(results, args.batch)]
    sections += [f"\n## {name}\n\n{bench.format_table(r)}" for name, r in results.items() if "points" in r]
    text = "\n".join(sections) + "\n"
    out = Path(args.out)
    write_atomic(out / "gpu_latency.md", lambda t: t.write_text(text))
    write_atomic(out / "gpu_latency.json", lambda t: t.write_text(json.dumps(results, indent=2) + "\n"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
