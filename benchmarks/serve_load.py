"""Bounded HTTP load against the BentoML service on this machine, against the model's own speed in-process.

    python benchmarks/serve_load.py --model-dir exports/sst2 --clients 1 16 64 --requests 600 --rounds 3 --starts 2

starts ``bentoml serve`` on free loopback ports, once with adaptive batching and once without (both stay up;
their rounds alternate, so a busy moment of the machine hits both alike), and measures in the same run the
in-process ``runtime.Classifier`` on the same sentences one at a time (batch 1): the reference the service is
judged against; ``--starts`` repeats it all on fresh servers, started in the other order. The load generator
is a separate process (asyncio, ``aiohttp``, one keep-alive connection per client), so it does not share an
interpreter with the measuring process. Load is bounded: a fixed number of requests per round, a time limit,
loopback addresses only. ``--url`` loads a running server instead (add ``--model-dir`` for the reference).

Prints per batching mode and number of clients the medians over rounds: requests/s, the ratio to the
reference, p50/p99 latency, errors, and the mean batch size (requests per model call, from BentoML's
``adaptive_batch_size`` histogram in ``/metrics``); then batched against unbatched.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's packages (the load generator runs this file as a script)
    sys.path.insert(0, str(REPO))

from bentos.local import ServerError, batch_histogram, bento_server  # noqa: E402
from ernie_common.io import write_json_atomic  # noqa: E402
from ernie_common.tables import TableError, read_examples  # noqa: E402

LOOPBACK_NAMES = {"localhost"}
DEFAULT_SST2 = REPO.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"
MODES = {"batched": {"COMPRESSOR_BATCHING": "1"}, "unbatched": {"COMPRESSOR_BATCHING": "0"}}


class LoadError(ServerError):
    """The load run cannot start (not a loopback address, the load generator failed); the message names the fix."""


def check_loopback(url: str) -> str:
    host = urlparse(url).hostname or ""
    try:
        loopback = host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LoadError(f"{url} is not a loopback address: serve_load only loads 127.0.0.1 / ::1 / localhost")
    return url.rstrip("/")


# ------------------------------------------------------------------------------------------ load generator

async def _client_load(url: str, bodies: list[bytes], clients: int, time_limit_s: float, timeout_s: float,
                       keep_answers: bool) -> tuple[list, float]:
    """``clients`` coroutines, each with its own keep-alive connection, take the next body until none is left;
    bodies not started before the time limit are skipped (status -1). aiohttp rather than httpx: on a small
    machine the load generator's CPU is taken from the server, and with httpx's client at 64 connections the
    same server measured a third of the requests/s (70 against 211, 2 cores)."""
    import aiohttp

    outcomes: list = [None] * len(bodies)
    queue = iter(range(len(bodies)))
    deadline = time.monotonic() + time_limit_s
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout,
                                     trust_env=False) as session:
        async def one_client() -> None:
            for i in queue:
                if time.monotonic() > deadline:
                    outcomes[i] = (-1, None, None)
                    continue
                start = time.perf_counter()
                try:
                    async with session.post("/classify", data=bodies[i], headers=headers) as response:
                        body = await response.read()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    outcomes[i] = (0, time.perf_counter() - start, None)
                    continue
                latency = time.perf_counter() - start
                ok = response.status == 200
                outcomes[i] = (response.status, latency, json.loads(body) if ok and keep_answers else None)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return outcomes, time.perf_counter() - start


def client_main(job_path: str) -> int:
    """The load generator's own process: reads a job file, writes its outcomes beside it."""
    job = json.loads(Path(job_path).read_text())
    bodies = [json.dumps(p).encode() for p in job["payloads"]]
    outcomes, wall = asyncio.run(_client_load(job["url"], bodies, job["clients"], job["time_limit_s"],
                                              job["timeout_s"], job["keep_answers"]))
    write_json_atomic(job["out"], {"outcomes": outcomes, "wall_s": wall})
    return 0


@dataclass
class LoadResult:
    mode: str
    clients: int
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


def run_load(url: str, payloads: Sequence[dict], concurrency: int, time_limit_s: float,
             mode: str = "server", timeout_s: float = 60, keep_answers: bool = True) -> LoadResult:
    """POST every payload to ``/classify`` from ``concurrency`` clients in a separate load-generator process;
    answers are kept in payload order (None for failures) when ``keep_answers``."""
    url = check_loopback(url)
    before = batch_histogram(url)
    with tempfile.TemporaryDirectory(prefix="serve_load_job_") as folder:
        job, out = Path(folder) / "job.json", Path(folder) / "out.json"
        job.write_text(json.dumps({"url": url, "payloads": list(payloads), "clients": concurrency,
                                   "time_limit_s": time_limit_s, "timeout_s": timeout_s,
                                   "keep_answers": keep_answers, "out": str(out)}))
        try:
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--client-job", str(job)],
                                  capture_output=True, text=True, timeout=time_limit_s + timeout_s + 60)
        except subprocess.TimeoutExpired:
            raise LoadError(f"the load generator ran past {time_limit_s + timeout_s + 60:.0f} s: is the machine "
                            "overloaded? (see uptime)") from None
        if done.returncode != 0 or not out.is_file():
            raise LoadError(f"the load generator failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        result = json.loads(out.read_text())
    after = batch_histogram(url)
    outcomes, wall = result["outcomes"], result["wall_s"]
    statuses: dict[int, int] = {}
    for status, _, _ in outcomes:
        statuses[status] = statuses.get(status, 0) + 1
    ok = [(lat, payload) for (status, lat, _), payload in zip(outcomes, payloads) if status == 200]
    latencies_ms = np.array([lat for lat, _ in ok]) * 1000 if ok else np.array([np.nan])
    texts = sum(len(p.get("texts") or p.get("pairs")) for _, p in ok)
    calls = after[1] - before[1]
    return LoadResult(mode, concurrency, len(payloads), texts, len(payloads) - len(ok), wall, len(ok) / wall,
                      texts / wall, float(np.percentile(latencies_ms, 50)), float(np.percentile(latencies_ms, 99)),
                      (after[0] - before[0]) / calls if calls else None, statuses,
                      [answer for _, _, answer in outcomes])


# ---------------------------------------------------------------------------------------------- reference

def classifier_reference(model_dir: str | Path, sentences: Sequence[str], seconds: float = 3.0) -> float:
    """In-process ``runtime.Classifier`` (as loaded with its defaults) on one sentence per call: sentences/s
    over about ``seconds``, after a warm-up."""
    from runtime import Classifier

    classifier = Classifier.load(model_dir)
    for text in sentences[:20]:
        classifier([text])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier([sentences[done % len(sentences)]])
        done += 1
    return done / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------------- the table

def read_sentences(path: str | Path) -> list[str]:
    """Single sentences of a GLUE-style file (SST-2 dev by default): what the load sends as ``texts``."""
    try:
        texts = read_examples(path, hint="pass --data with a single-sentence column such as SST-2's 'sentence'").texts
    except TableError as err:
        raise LoadError(f"--data: {err}") from None
    if texts and not isinstance(texts[0], str):
        raise LoadError(f"--data {path} holds sentence pairs: the load sends single texts, pass a single-sentence "
                        "file such as SST-2's dev.tsv")
    return texts


def make_payloads(sentences: Sequence[str], requests: int, texts_per_request: int, offset: int = 0) -> list[dict]:
    if not sentences:
        raise LoadError("no sentences to send: pass --data with a GLUE SST-2 style TSV (column 'sentence')")
    return [{"texts": [sentences[(offset + i * texts_per_request + j) % len(sentences)]
                       for j in range(texts_per_request)]} for i in range(requests)]


@dataclass
class Row:
    mode: str
    clients: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    mean_batch_size: float | None
    rounds: list[dict] = field(default_factory=list)


def median_row(results: list[LoadResult]) -> Row:
    batches = [r.mean_batch_size for r in results if r.mean_batch_size is not None]
    return Row(results[0].mode, results[0].clients, float(np.median([r.requests_per_s for r in results])),
               float(np.median([r.p50_ms for r in results])), float(np.median([r.p99_ms for r in results])),
               sum(r.errors for r in results), float(np.median(batches)) if batches else None,
               [{k: v for k, v in asdict(r).items() if k != "answers"} for r in results])


def measure(urls: dict[str, str], sentences: Sequence[str], clients: Sequence[int], requests: int, rounds: int,
            texts_per_request: int, time_limit_s: float, log=print) -> dict[tuple[str, int], list[LoadResult]]:
    """Per number of clients, ``rounds`` rounds alternating the servers; a warm-up load first (untimed, long
    enough for BentoML's dispatcher to finish its training batches). The results per (mode, clients)."""
    warm = make_payloads(sentences, max(64, 4 * max(clients)), texts_per_request)
    for url in urls.values():
        run_load(url, warm, max(clients), time_limit_s, "warm-up", keep_answers=False)
    results: dict[tuple[str, int], list[LoadResult]] = {}
    for n in clients:
        for r in range(rounds):
            payloads = make_payloads(sentences, requests, texts_per_request, offset=r * requests)
            for mode, url in (urls.items() if r % 2 == 0 else reversed(urls.items())):
                result = run_load(url, payloads, n, time_limit_s, mode, keep_answers=False)
                log(f"  {mode:9} {n:3} clients round {r + 1}: {result.requests_per_s:6.1f} req/s, "
                    f"p99 {result.p99_ms:6.1f} ms, errors {result.errors}")
                results.setdefault((mode, n), []).append(result)
    return results


def table(rows: list[Row], reference: float | None) -> str:
    lines = ["| mode | clients | requests/s | service / Classifier | p50 ms | p99 ms | errors | mean batch (requests) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratio = f"{row.requests_per_s / reference:.0%}" if reference else "-"
        batch = "-" if row.mean_batch_size is None else f"{row.mean_batch_size:.1f}"
        lines.append(f"| {row.mode} | {row.clients} | {row.requests_per_s:.1f} | {ratio} | {row.p50_ms:.1f} | "
                     f"{row.p99_ms:.1f} | {row.errors} | {batch} |")
    return "\n".join(lines)


def batching_comparison(rows: list[Row]) -> list[str]:
    by = {(r.mode, r.clients): r for r in rows}
    lines = []
    for n in sorted({r.clients for r in rows}):
        on, off = by.get(("batched", n)), by.get(("unbatched", n))
        if on and off:
            lines.append(f"{n} clients: batching on/off throughput {on.requests_per_s / off.requests_per_s:.2f}x, "
                         f"p99 {on.p99_ms:.1f} vs {off.p99_ms:.1f} ms")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server on a loopback address, e.g. http://127.0.0.1:3000")
    parser.add_argument("--model-dir", help="start `bentoml serve` on this model (one server per mode), and "
                                            "measure the in-process Classifier on it")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 16, 64], help="concurrent clients")
    parser.add_argument("--requests", type=int, default=600, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--starts", type=int, default=1,
                        help="fresh servers this many times (start order alternating), medians over every round: "
                             "on a small machine where a process lands on the cores moves it by several percent")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=120, help="seconds per round; later requests skipped")
    parser.add_argument("--data", default=str(DEFAULT_SST2),
                        help="single sentences: a TSV/CSV with a 'sentence' or 'text' column (SST-2 dev), or lines")
    parser.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra environment for the servers started here, e.g. COMPRESSOR_WORKERS=1")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if not (args.url or args.model_dir):
        parser.error("pass --model-dir (start servers here) or --url (a running server)")
    for name in ("requests", "rounds", "starts", "texts_per_request"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.clients) < 1:
        parser.error("--clients must be at least 1")
    if any("=" not in pair for pair in args.server_env):
        parser.error("--server-env takes KEY=VALUE pairs")
    args.server_env = dict(pair.split("=", 1) for pair in args.server_env)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--client-job"]:
        return client_main(sys.argv[2])
    args = parse_args(argv)
    try:
        sentences = read_sentences(args.data)
        results: dict[tuple[str, int], list[LoadResult]] = {}
        reference = []
        for start in range(1 if args.url else args.starts):
            with contextlib.ExitStack() as stack:
                if args.url:
                    urls = {"server": check_loopback(args.url)}
                else:
                    if args.starts > 1:
                        print(f"start {start + 1} of {args.starts}")
                    order = args.modes if start % 2 == 0 else args.modes[::-1]
                    urls = {mode: stack.enter_context(bento_server(args.model_dir, {**MODES[mode],
                                                                                    **args.server_env})).url
                            for mode in order}
                if args.model_dir:
                    reference.append(classifier_reference(args.model_dir, sentences))
                for key, found in measure(urls, sentences, args.clients, args.requests, args.rounds,
                                          args.texts_per_request, args.time_limit).items():
                    results.setdefault(key, []).extend(found)
                if args.model_dir:
                    reference.append(classifier_reference(args.model_dir, sentences))
        modes = ["server"] if args.url else args.modes
        rows = [median_row(results[(mode, n)]) for n in args.clients for mode in modes]
    except (LoadError, OSError, httpx.HTTPError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ref = float(np.median(reference)) if reference else None
    print(f"\n{args.requests} requests x {args.texts_per_request} texts per round, {args.rounds} rounds"
          + (f" x {args.starts} server starts" if args.starts > 1 and not args.url else "") + " (medians), "
          f"uptime load {os.getloadavg()[0]:.2f}" + (f", server env {args.server_env}" if args.server_env else ""))
    if ref:
        print(f"in-process runtime.Classifier, one sentence per call: {ref:.1f} sentences/s "
              f"(before/after each start's load: {', '.join(f'{r:.1f}' for r in reference)})")
    print(table(rows, ref))
    print("\n".join(batching_comparison(rows)))
    if args.json:
        write_json_atomic(args.json, {"reference_sentences_per_s": reference, "rows": [asdict(r) for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
