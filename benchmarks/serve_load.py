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
import gc
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

from bentos.local import ServerError, batch_histogram, bento_server, descendants, pinned  # noqa: E402
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


WARM_CONNECTIONS = 32


async def _open_load(url: str, bodies: list[bytes], times: list[float], timeout_s: float) -> tuple[list, float]:
    """Open loop: body i is sent at ``times[i]`` seconds after the start whatever the answers so far (real
    traffic does not wait for the server), each on a connection of its own pool; (status, latency, lag) per
    body, lag being how late the generator itself sent it. Status 0: no answer (a reset or a time-out).
    ``WARM_CONNECTIONS`` keep-alive connections are opened first (``/healthz``), as a running service's
    clients or load balancer hold them: otherwise the first requests of every run also pay for connecting."""
    import aiohttp

    loop = asyncio.get_running_loop()
    outcomes: list = [None] * len(bodies)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=0), trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async def connect() -> None:
            async with session.get("/healthz") as response:
                await response.read()

        await asyncio.gather(*(connect() for _ in range(WARM_CONNECTIONS)))
        t0 = loop.time() + 0.2

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, t0 + times[i] - loop.time()))
            lag, start = loop.time() - t0 - times[i], time.perf_counter()
            try:
                async with session.post("/classify", data=bodies[i], headers=headers) as response:
                    await response.read()
                outcomes[i] = (response.status, time.perf_counter() - start, lag)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                outcomes[i] = (0, time.perf_counter() - start, lag)

        await asyncio.gather(*(one(i) for i in range(len(bodies))))
        return outcomes, loop.time() - t0


def client_main(job_path: str) -> int:
    """The load generator's own process: reads a job file, writes its outcomes beside it."""
    job = json.loads(Path(job_path).read_text())
    bodies = [json.dumps(p).encode() for p in job.pop("payloads")]
    # everything made so far lives until the end: out of the garbage collector's view, or its full collections
    # walk it all during the run, and every request in flight at that moment measures the pause
    gc.collect()
    gc.freeze()
    if job.get("times") is not None:
        outcomes, wall = asyncio.run(_open_load(job["url"], bodies, job["times"], job["timeout_s"]))
    else:
        outcomes, wall = asyncio.run(_client_load(job["url"], bodies, job["clients"], job["time_limit_s"],
                                                  job["timeout_s"], job["keep_answers"]))
    write_json_atomic(job["out"], {"outcomes": outcomes, "wall_s": wall})
    return 0


GENERATOR_CPUS: set[int] | None = None
"""The cores the load generator is pinned to (``--generator-cores``); None: it shares every core with the server."""


def split_cores(generator_cores: int) -> tuple[set[int] | None, set[int] | None]:
    """(the server's cores, the generator's): the last ``generator_cores`` usable cores for the generator, the
    rest for the server; (None, None) for 0, both unpinned."""
    if not generator_cores:
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    if generator_cores >= len(cores):
        raise LoadError(f"--generator-cores {generator_cores} leaves none of the {len(cores)} usable cores to the "
                        "server: give the generator fewer")
    return set(cores[:-generator_cores]), set(cores[-generator_cores:])


def _generate(url: str, payloads: Sequence[dict], limit_s: float, **job) -> dict:
    """Run one job in the load generator's own process (this file, ``--client-job``, on ``GENERATOR_CPUS``);
    its outcomes."""
    with tempfile.TemporaryDirectory(prefix="serve_load_job_") as folder:
        path, out = Path(folder) / "job.json", Path(folder) / "out.json"
        path.write_text(json.dumps({"url": url, "payloads": list(payloads), "out": str(out), **job}))
        try:
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--client-job", str(path)],
                                  capture_output=True, text=True, timeout=limit_s + 60,
                                  preexec_fn=pinned(GENERATOR_CPUS))
        except subprocess.TimeoutExpired:
            raise LoadError(f"the load generator ran past {limit_s + 60:.0f} s: is the machine overloaded? "
                            "(see uptime)") from None
        if done.returncode != 0 or not out.is_file():
            raise LoadError(f"the load generator failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        return json.loads(out.read_text())


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
    result = _generate(url, payloads, time_limit_s + timeout_s, clients=concurrency, time_limit_s=time_limit_s,
                       timeout_s=timeout_s, keep_answers=keep_answers)
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


# ------------------------------------------------------------------------------------------ open loop and soak

SHAPES = ("steady", "poisson", "burst", "ramp")


def arrival_times(shape: str, rate: float, duration: float, seed: int = 0) -> list[float]:
    """When each request of an open-loop run is sent, ``rate`` per second on average over ``duration``:
    ``steady`` evenly spaced; ``poisson`` random (exponential gaps); ``burst`` 0.5 s at 4x the rate then 1.5 s
    of silence, over and over; ``ramp`` rising linearly from 0 to 2x the rate."""
    n = max(1, int(rate * duration))
    if shape == "steady":
        return [i / rate for i in range(n)]
    if shape == "poisson":
        return np.cumsum(np.random.default_rng(seed).exponential(1 / rate, n)).tolist()
    if shape == "burst":
        per_burst = rate * 2.0
        return [2.0 * (i // per_burst) + 0.5 * (i % per_burst) / per_burst for i in range(n)]
    if shape == "ramp":
        return [float(np.sqrt(i * duration / rate)) for i in range(n)]
    raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


@dataclass
class OpenResult:
    shape: str
    load: float
    """The offered rate as a multiple of the measured capacity."""
    offered_per_s: float
    sent: int
    ok: int
    refused: int
    """503s: refused by admission control (at arrival, or shed from the queue under overload)."""
    unanswered: int
    """No answer at all (a reset, a time-out) or another status: what must never happen."""
    p50_ms: float
    p99_ms: float
    refused_p99_ms: float
    lag_p99_ms: float
    """How late the generator itself sent its requests (a busy machine delays the load too)."""


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q)) if values else float("nan")


def run_open(url: str, sentences: Sequence[str], shape: str, load: float, capacity: float, duration: float,
             timeout_s: float = 30.0) -> OpenResult:
    """Open-loop traffic of ``shape`` at ``load`` x ``capacity`` requests/s for ``duration`` seconds."""
    rate = load * capacity
    times = arrival_times(shape, rate, duration)
    payloads = make_payloads(sentences, len(times), 1)
    outcomes = _generate(check_loopback(url), payloads, duration + timeout_s, times=times, timeout_s=timeout_s)["outcomes"]
    by_status: dict[int, list[float]] = {}
    for status, latency, _ in outcomes:
        by_status.setdefault(status, []).append(latency)
    ok, refused = by_status.get(200, []), by_status.get(503, [])
    return OpenResult(shape, load, rate, len(outcomes), len(ok), len(refused), len(outcomes) - len(ok) - len(refused),
                      _p(ok, 50), _p(ok, 99), _p(refused, 99), _p([lag for _, _, lag in outcomes], 99))


def open_table(rows: list[OpenResult], unloaded_p99_ms: float) -> str:
    lines = ["| shape | load | offered/s | sent | 200 | 503 | no answer | p50 ms | p99 ms | p99 / unloaded | "
             "503 p99 ms | generator lag p99 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.shape} | {r.load:g}x | {r.offered_per_s:.0f} | {r.sent} | {r.ok} | {r.refused} | "
                     f"{r.unanswered} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.p99_ms / unloaded_p99_ms:.2f} | "
                     f"{'-' if r.refused == 0 else f'{r.refused_p99_ms:.1f}'} | {r.lag_p99_ms:.1f} |")
    return "\n".join(lines)


def capacity_and_unloaded(url: str, sentences: Sequence[str], clients: int = 16) -> tuple[float, float]:
    """The service's capacity (requests/s with ``clients`` closed-loop clients) and its unloaded p99 (one
    client), each the median of three rounds. The unloaded p99 first, on the fresh server: measured right after
    the capacity rounds it came out 3x higher (~30 ms against ~9 on 2 cores), which would flatter every ratio
    to it."""
    run_load(url, make_payloads(sentences, 100, 1), 1, 60, "warm-up", keep_answers=False)
    unloaded = [run_load(url, make_payloads(sentences, 300, 1, offset=r * 300), 1, 60, keep_answers=False)
                for r in range(3)]
    capacity = [run_load(url, make_payloads(sentences, 1500, 1, offset=r * 1500), clients, 60, keep_answers=False)
                for r in range(3)]
    return (float(np.median([c.requests_per_s for c in capacity])), float(np.median([u.p99_ms for u in unloaded])))


def rss_mb(pid: int) -> float:
    """Resident memory of a process and every process below it (the server and its workers), in MiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, ValueError, StopIteration):
            status = Path(f"/proc/{p}/status").read_text().splitlines()
            total += int(next(line for line in status if line.startswith("VmRSS:")).split()[1])
    return total / 1024


@dataclass
class SoakRow:
    minute: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    rss_mb: float


def soak(url: str, pid: int, sentences: Sequence[str], clients: int, minutes: float, window_s: float) -> list[SoakRow]:
    """Closed-loop ``clients`` for ``minutes``, measured per ``window_s``: throughput, latency, errors (any
    status but 200; requests the window had no time for are not errors) and the server's memory."""
    rows = []
    for w in range(max(1, int(minutes * 60 / window_s))):
        payloads = make_payloads(sentences, int(2000 * window_s), 1, offset=w * 997)
        r = run_load(url, payloads, clients, window_s, keep_answers=False)
        errors = sum(n for status, n in r.statuses.items() if status not in (200, -1))
        rows.append(SoakRow(round((w + 1) * window_s / 60, 2), r.requests_per_s, r.p50_ms, r.p99_ms, errors,
                            rss_mb(pid)))
    return rows


def soak_table(rows: list[SoakRow]) -> str:
    lines = ["| minute | requests/s | p50 ms | p99 ms | errors | server RSS MiB |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.minute:g} | {r.requests_per_s:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {r.rss_mb:.0f} |"
              for r in rows]
    third = max(1, len(rows) // 3)
    first, last = rows[:third], rows[-third:]
    warm = next((r for r in rows if r.minute >= 1), rows[0])  # the first minute loads caches and pools
    drift = np.median([r.p99_ms for r in last]) / np.median([r.p99_ms for r in first]) - 1
    lines.append(f"\nRSS growth: last window / first {rows[-1].rss_mb / rows[0].rss_mb - 1:+.1%}, / minute "
                 f"{warm.minute:g} {rows[-1].rss_mb / warm.rss_mb - 1:+.1%}; p99 drift (median of the last third / "
                 f"the first third) {drift:+.1%}; errors {sum(r.errors for r in rows)}")
    return "\n".join(lines)


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
    parser.add_argument("--generator-cores", type=int, default=0, metavar="N",
                        help="pin the load generator to the last N cores and the servers started here to the rest "
                             "(default 0: they share every core, and the generator's work slows the server)")
    traffic = parser.add_argument_group("open loop and soak (one batched server)")
    traffic.add_argument("--open-loop", nargs="+", type=float, metavar="LOAD",
                         help="open-loop runs at these multiples of the measured capacity (e.g. 0.8 2): the capacity "
                              "is the requests/s of 16 closed-loop clients, the unloaded p99 that of one client")
    traffic.add_argument("--shapes", nargs="+", choices=SHAPES, default=["steady"], help="open-loop arrival patterns")
    traffic.add_argument("--duration", type=float, default=30, help="seconds per open-loop run")
    traffic.add_argument("--soak", type=float, metavar="MINUTES", help="closed-loop load for this many minutes")
    traffic.add_argument("--soak-clients", type=int, default=16)
    traffic.add_argument("--window", type=float, default=30, help="soak: seconds per row of the table")
    traffic.add_argument("--server-pid", type=int, help="with --url and --soak: the server's PID, for its memory")
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


def traffic_main(args: argparse.Namespace, sentences: Sequence[str]) -> dict:
    """``--open-loop`` and ``--soak`` against one batched server (started here, or ``--url``)."""
    out: dict = {}
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = check_loopback(args.url), args.server_pid
        else:
            server = stack.enter_context(bento_server(args.model_dir, {**MODES["batched"], **args.server_env},
                                                      cpus=args.server_cpus))
            url, pid = server.url, server.pid
        if args.open_loop:
            capacity, unloaded = capacity_and_unloaded(url, sentences)
            print(f"capacity {capacity:.1f} requests/s (16 closed-loop clients), unloaded p99 {unloaded:.1f} ms "
                  "(1 client); medians of 3 rounds")
            rows = [run_open(url, sentences, shape, load, capacity, args.duration)
                    for shape in args.shapes for load in args.open_loop]
            print(open_table(rows, unloaded))
            out["open_loop"] = {"capacity": capacity, "unloaded_p99_ms": unloaded, "rows": [asdict(r) for r in rows]}
        if args.soak:
            rows = soak(url, pid or 0, sentences, args.soak_clients, args.soak, args.window)
            print(f"\nsoak: {args.soak_clients} closed-loop clients for {args.soak:g} minutes")
            print(soak_table(rows))
            out["soak"] = [asdict(r) for r in rows]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--client-job"]:
        return client_main(sys.argv[2])
    global GENERATOR_CPUS
    args = parse_args(argv)
    try:
        args.server_cpus, GENERATOR_CPUS = split_cores(args.generator_cores)
    except LoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if GENERATOR_CPUS:
        print(f"cores: server {sorted(args.server_cpus)}, load generator {sorted(GENERATOR_CPUS)}")
    if args.open_loop or args.soak:
        try:
            found = traffic_main(args, read_sentences(args.data))
        except (LoadError, OSError, httpx.HTTPError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.json:
            write_json_atomic(args.json, found)
        return 0
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
                    urls = {mode: stack.enter_context(bento_server(args.model_dir, {**MODES[mode], **args.server_env},
                                                                   cpus=args.server_cpus)).url
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
