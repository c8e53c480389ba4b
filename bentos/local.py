"""The service on this machine in a child process: ``bentoml serve`` on a free loopback port, ready when
``/readyz`` answers, stopped with every worker it started. For tests, benchmarks and notebooks:

    with bento_server("exports/sst2", env={"COMPRESSOR_WORKERS": "1"}) as server:
        httpx.post(f"{server.url}/classify", json={"texts": ["a fine film"]})

A service that cannot start (a directory that is not a model, a bad setting) raises :class:`ServerError` with
the service's own error line, not a time-out.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx

from bentos.store import REPO, SERVICE
from ernie_common.errors import UserError

BATCH_METRIC = "bentoml_service_adaptive_batch_size"
STARTUP_FAILED = "Application startup failed"
ERROR_LINE = re.compile(r"^[\w.]+(?:Error|Exception): .+$", re.MULTILINE)


class ServerError(UserError):
    """The service did not start, or did not become ready; the message names the cause and the log."""


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
            raise ServerError(f"bentoml serve exited with {proc.returncode} before /readyz answered: see {log_path}")
        if failure := startup_failure(log_path):
            raise ServerError(f"the service failed to start: {failure} (log: {log_path})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.5)
    raise ServerError(f"{url}/readyz did not answer 200 within {timeout_s:.0f} s: see {log_path}")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_process_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """Stop the server and every worker it started: its process group, SIGTERM then SIGKILL, then any worker
    that BentoML's process manager had put in a group of its own (it would outlive a killed manager)."""
    workers = descendants(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace_s)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Server:
    url: str
    pid: int
    log_path: Path


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins a child process (and its children) to ``cpus``; None leaves it unpinned."""
    return None if not cpus else lambda: os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def bento_server(model_dir: str | Path | None, env: dict[str, str] | None = None, ready_timeout_s: float = 300,
                 log_dir: str | Path | None = None, cpus: set[int] | None = None) -> Iterator[Server]:
    """``bentoml serve`` the service on a free 127.0.0.1 port in its own process group; stopped on exit.
    ``model_dir=None`` serves the model store's model (``BENTOML_HOME`` is ``log_dir/bentoml_home``); ``cpus``
    pins the server to those cores (its workers and threads are sized from them)."""
    port = free_port()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="bento_server_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"bentoml_serve_{port}.log"
    child_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(log_dir / "bentoml_home"),
                 **(env or {})}
    child_env.pop("COMPRESSOR_MODEL_DIR", None)
    if model_dir is not None:
        child_env["COMPRESSOR_MODEL_DIR"] = str(model_dir)
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=pinned(cpus))
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
