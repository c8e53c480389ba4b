"""Bounded HTTP load against the BentoML service on this machine, batched against unbatched.

Either point it at a running server (``--url http://127.0.0.1:3000``) or let it start ``bentoml serve`` itself
on a free loopback port for each batching mode (``--model-dir DIR``). Load is always bounded: a fixed number
of requests, N concurrent clients, a time limit; only loopback addresses are accepted.

    python benchmarks/serve_load.py --model-dir runs/demo/final --requests 400 --concurrency 32

Prints one table row per mode: requests/s, texts/s, p50/p99 latency, errors, and the mean batch size (requests
per model call) from the server's ``/metrics`` (BentoML's ``adaptive_batch_size`` histogram).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlparse

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SERVICE = "bentos.service:TextClassifier"
BATCH_METRIC = "bentoml_service_adaptive_batch_size"
LOOPBACK_NAMES = {"localhost"}
STARTUP_FAILED = "Application startup failed"
ERROR_LINE = re.compile(r"^[\w.]+(?:Error|Exception): .+$", re.MULTILINE)
DEFAULT_SST2 = REPO.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"


class LoadError(RuntimeError):
    """The load run cannot start (bad address, server never ready); the message names the fix."""


def check_loopback(url: str) -> str:
    host = urlparse(url).hostname or ""
    try:
        loopback = host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LoadError(f"{url} is not a loopback address: serve_load only loads 127.0.0.1 / ::1 / localhost")
    return url.rstrip("/")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def startup_failure(log_path: Path) -> str | None:
    """The error that stopped the service from starting (BentoML keeps restarting the worker, never exits)."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    if STARTUP_FAILED not in text:
        return None
    errors = ERROR_LINE.findall(text)
    return errors[-1] if errors else STARTUP_FAILED


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LoadError(f"bentoml serve exited with {proc.returncode} before /readyz answered: see {log_path}")
        if failure := startup_failure(log_path):
            raise LoadError(f"the service failed to start: {failure} (log: {log_path})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.5)
    raise LoadError(f"{url}/readyz did not answer 200 within {timeout_s:.0f} s: see {log_path}")


def stop_process_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """Stop the server and every worker it forked: its own process group, SIGTERM then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace_s)


@dataclass
class Server:
    url: str
    pid: int
    log_path: Path


@contextlib.contextmanager
def bento_server(model_dir: str | Path, env: dict[str, str] | None = None, ready_timeout_s: float = 120,
                 log_dir: str | Path | None = None) -> Iterator[Server]:
    """``bentoml serve`` the service on a free 127.0.0.1 port in its own process group; stopped on exit."""
    port = free_port()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="serve_load_"))
    log_path = log_dir / f"bentoml_serve_{port}.log"
    child_env = {**os.environ, "COMPRESSOR_MODEL_DIR": str(model_dir), "BENTOML_DO_NOT_TRACK": "True",
                 "BENTOML_HOME": str(log_dir / "bentoml_home"), **(env or {})}
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, ready_timeout_s, log_path)
        yield Server(url, proc.pid, log_path)
    finally:
        stop_process_group(proc)


def batch_histogram(url: str) -> tuple[float, float]:
    """(sum, count) of the adaptive-batch-size histogram over every worker, from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != BATCH_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{BATCH_METRIC}_sum":
                total += sample.value
            elif sample.name == f"{BATCH_METRIC}_count":
                count += sample.value
    return total, count


@dataclass
class LoadResult:
    mode: str
    requests: int
    texts: int
    errors: int
    wall_s: float
    requests_per_s: float
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch_size: float | None
    statuses: dict[int, int] = field(default_factory=dict)
    answers: list = field(default_factory=list, repr=False)

    def row(self) -> str:
        batch = "-" if self.mean_batch_size is None else f"{self.mean_batch_size:.1f}"
        return (f"| {self.mode} | {self.requests} | {self.requests_per_s:.1f} | {self.texts_per_s:.1f} | "
                f"{self.p50_ms:.0f} | {self.p99_ms:.0f} | {self.errors} | {batch} |")


TABLE_HEADER = ("| mode | requests | requests/s | texts/s | p50 ms | p99 ms | errors | mean batch (requests) |\n"
                "|---|---|---|---|---|---|---|---|")


def run_load(url: str, payloads: Sequence[dict], concurrency: int, time_limit_s: float,
             mode: str = "server", timeout_s: float = 60) -> LoadResult:
    """POST every payload to ``/classify`` from ``concurrency`` clients; requests not started before the time
    limit are skipped (counted as errors). Answers are kept in payload order (None for failures)."""
    url = check_loopback(url)
    before = batch_histogram(url)
    deadline = time.monotonic() + time_limit_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    with httpx.Client(base_url=url, timeout=timeout_s, limits=limits, trust_env=False) as client:
        def one(payload: dict) -> tuple[int, float, object]:
            if time.monotonic() > deadline:
                return -1, float("nan"), None
            start = time.perf_counter()
            try:
                response = client.post("/classify", json=payload)
            except httpx.HTTPError:
                return 0, time.perf_counter() - start, None
            ok = response.status_code == 200
            return response.status_code, time.perf_counter() - start, response.json() if ok else None

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            outcomes = list(pool.map(one, payloads))
        wall = time.perf_counter() - start

    after = batch_histogram(url)
    statuses: dict[int, int] = {}
    for status, _, _ in outcomes:
        statuses[status] = statuses.get(status, 0) + 1
    done = [(lat, payload) for (status, lat, _), payload in zip(outcomes, payloads) if status == 200]
    latencies_ms = np.array([lat for lat, _ in done]) * 1000 if done else np.array([np.nan])
    texts = sum(len(p.get("texts") or p.get("pairs")) for _, p in done)
    calls = after[1] - before[1]
    return LoadResult(mode, len(payloads), texts, len(payloads) - len(done), wall, len(done) / wall, texts / wall,
                      float(np.percentile(latencies_ms, 50)), float(np.percentile(latencies_ms, 99)),
                      (after[0] - before[0]) / calls if calls else None, statuses,
                      [answer for _, _, answer in outcomes])


def read_sst2_sentences(path: str | Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["sentence"] for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]


def make_payloads(sentences: Sequence[str], requests: int, texts_per_request: int) -> list[dict]:
    if not sentences:
        raise LoadError("no sentences to send: pass --data with a GLUE SST-2 style TSV (column 'sentence')")
    return [{"texts": [sentences[(i * texts_per_request + j) % len(sentences)] for j in range(texts_per_request)]}
            for i in range(requests)]


MODES = {"batched": {"COMPRESSOR_BATCHING": "1"}, "unbatched": {"COMPRESSOR_BATCHING": "0"}}


def compare_modes(model_dir: str | Path, payloads: list[dict], concurrency: int, time_limit_s: float,
                  modes: Sequence[str] = tuple(MODES), extra_env: dict[str, str] | None = None,
                  warmup: int = 8) -> list[LoadResult]:
    """Start a server per batching mode, warm it up (untimed), load it, stop it."""
    results = []
    for mode in modes:
        with bento_server(model_dir, env={**MODES[mode], **(extra_env or {})}) as server:
            run_load(server.url, payloads[:warmup], min(concurrency, warmup), time_limit_s, "warmup")
            results.append(run_load(server.url, payloads, concurrency, time_limit_s, mode))
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server on a loopback address, e.g. http://127.0.0.1:3000")
    target.add_argument("--model-dir", help="start `bentoml serve` on this model, once per batching mode")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=120, help="seconds; later requests are skipped")
    parser.add_argument("--data", default=str(DEFAULT_SST2), help="TSV with a 'sentence' column (SST-2 dev)")
    parser.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra environment for the servers started with --model-dir, e.g. OMP_NUM_THREADS=1 "
                             "COMPRESSOR_MAX_BATCH_SIZE=32")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "texts_per_request"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any("=" not in pair for pair in args.server_env):
        parser.error("--server-env takes KEY=VALUE pairs")
    args.server_env = dict(pair.split("=", 1) for pair in args.server_env)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        payloads = make_payloads(read_sst2_sentences(args.data), args.requests, args.texts_per_request)
        if args.url:
            results = [run_load(args.url, payloads, args.concurrency, args.time_limit)]
        else:
            results = compare_modes(args.model_dir, payloads, args.concurrency, args.time_limit, args.modes,
                                    args.server_env)
    except (LoadError, OSError, httpx.HTTPError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.requests} requests x {args.texts_per_request} texts, {args.concurrency} concurrent clients"
          + (f", server env {args.server_env}" if args.server_env else ""))
    print(TABLE_HEADER)
    for result in results:
        print(result.row())
    if args.json:
        tmp = Path(f"{args.json}.tmp")
        tmp.write_text(json.dumps([{k: v for k, v in asdict(r).items() if k != "answers"} for r in results],
                                  indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
