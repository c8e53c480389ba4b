"""Serving settings: the environment, read once when ``bentoml serve`` imports the service (in every process).

=============================  ==========  =====================================================================
variable                       default     meaning
=============================  ==========  =====================================================================
COMPRESSOR_MODEL_DIR           (unset)     serve this HF or ``runtime.export`` directory instead of the model
                                           store's (or the Bento's) model
COMPRESSOR_BACKEND             auto        ``runtime.Classifier.load(backend=...)``: auto, torch, onnxruntime,
                                           tensorrt, cuda-graphs (torch on the GPU replaying CUDA graphs; an
                                           HF model directory)
COMPRESSOR_VARIANT             (best)      export variant: fp32, optimized, fp16, int8
COMPRESSOR_MAX_ITEMS           64          most texts (or pairs) one request may carry
COMPRESSOR_MAX_CHARS           10000       most characters in one text; longer ones are refused with a 422
COMPRESSOR_BATCHING            1           0 turns adaptive batching off (each request runs alone)
COMPRESSOR_MAX_BATCH_SIZE      64          most texts in one model call
COMPRESSOR_MAX_LATENCY_MS      10000       BentoML's latency budget: queued requests past it get a 503
COMPRESSOR_WORKERS             auto        server processes: one per 4 available cores, at least 1 (1 with a GPU)
COMPRESSOR_THREADS             auto        intra-op threads per process: the cores divided among the workers
COMPRESSOR_ACCESS_LOG          1           0 turns BentoML's per-request access log line off (no difference in
                                           requests/s measured on 2 cores; errors are still logged)
=============================  ==========  =====================================================================

Each worker's model runs one batch at a time on its share of the cores with ONNX Runtime's spinning off, so
idle workers leave the cores to busy ones. Few workers with several threads each beat one worker per core: each
worker batches only the requests its own event loop parsed, so more workers make smaller batches (measured on 2
cores with batching on: one worker with 2 threads served 1.2x the requests/s of two with one thread each at 16
clients). The cores counted (``ernie_common.env.usable_cpus``) honour the process's CPU affinity and a cgroup
CPU quota (a container's ``--cpus``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ernie_common.env import usable_cpus
from ernie_common.errors import UserError

GPU_BACKENDS = ("tensorrt", "cuda-graphs")  # runtime back ends that only run on a GPU
CORES_PER_WORKER = 4  # default CPU cores per server process (see the module docstring)
FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


class ServiceConfigError(UserError):
    """The serving environment is misconfigured; the message names the variable to fix."""


def env_int(name: str, default: int, minimum: int, env: Mapping[str, str] = os.environ) -> int:
    raw = env.get(name, "").strip()
    if not raw or raw == "auto":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServiceConfigError(f"{name}={raw!r} is not an integer: set it to a whole number >= {minimum}") from None
    if value < minimum:
        raise ServiceConfigError(f"{name}={value} is below {minimum}: set it to a whole number >= {minimum}")
    return value


def env_flag(name: str, default: bool, env: Mapping[str, str] = os.environ) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in FLAGS:
        raise ServiceConfigError(f"{name}={raw!r} is not a flag: set it to 1 or 0")
    return FLAGS[raw]


def on_gpu(backend: str, driver: Path = Path("/proc/driver/nvidia/version")) -> bool:
    """Whether the model will run on a GPU: asked for (tensorrt, cuda-graphs), or an NVIDIA driver is loaded
    (then ``runtime.Classifier`` prefers the GPU). Read from the driver, not torch: importing torch in the
    process manager would cost seconds per start, and a CPU image has no torch."""
    return backend in GPU_BACKENDS or (backend != "torch" and driver.exists())


@dataclass(frozen=True)
class Settings:
    model_dir: str | None
    backend: str
    variant: str | None
    max_items: int
    max_chars: int
    batching: bool
    max_batch_size: int
    max_latency_ms: int
    workers: int
    threads: int
    access_log: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, cpus: int | None = None,
                 gpu: bool | None = None) -> "Settings":
        backend = env.get("COMPRESSOR_BACKEND", "").strip() or "auto"
        cpus = cpus or usable_cpus()
        gpu = on_gpu(backend) if gpu is None else gpu
        # a GPU serves best from one process that batches; on CPUs a process per CORES_PER_WORKER cores
        workers = env_int("COMPRESSOR_WORKERS", 1 if gpu else max(1, cpus // CORES_PER_WORKER), 1, env)
        return cls(
            model_dir=env.get("COMPRESSOR_MODEL_DIR", "").strip() or None,
            backend=backend,
            variant=env.get("COMPRESSOR_VARIANT", "").strip() or None,
            max_items=env_int("COMPRESSOR_MAX_ITEMS", 64, 1, env),
            max_chars=env_int("COMPRESSOR_MAX_CHARS", 10_000, 1, env),
            batching=env_flag("COMPRESSOR_BATCHING", True, env),
            max_batch_size=env_int("COMPRESSOR_MAX_BATCH_SIZE", 64, 2, env),
            max_latency_ms=env_int("COMPRESSOR_MAX_LATENCY_MS", 10_000, 1, env),
            workers=workers,
            threads=env_int("COMPRESSOR_THREADS", max(1, cpus // workers), 1, env),
            access_log=env_flag("COMPRESSOR_ACCESS_LOG", True, env),
        )

    def public(self) -> dict:
        """What /model_info reports."""
        return {"batching": {"enabled": self.batching, "max_batch_size": self.max_batch_size,
                             "max_latency_ms": self.max_latency_ms, "max_items_per_request": self.max_items,
                             "max_chars_per_text": self.max_chars},
                "workers": self.workers, "threads_per_worker": self.threads}
