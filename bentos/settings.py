"""Serving settings: the environment (``COMPRESSOR_*``), read once when ``bentoml serve`` imports the service
(in every process), through pydantic-settings: typed, range-checked, one line naming the variable when wrong.

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
COMPRESSOR_MAX_LATENCY_MS      10000       BentoML's batching latency budget
COMPRESSOR_MAX_IN_FLIGHT       auto        requests one worker holds (queued + in the model) before it refuses
                                           more at once with a 503 and ``Retry-After``: the bound on the queue.
                                           auto: 16 times the depth at which the worker reaches its capacity
                                           (below), about a second of work; 0 turns admission control off
COMPRESSOR_QUEUE_BUDGET_MS     auto        under overload (requests arriving faster than the worker's measured
                                           capacity), a request that the requests already held would keep
                                           waiting longer than this is refused, and a queued one that has waited
                                           longer is answered 503 (``bentos/admission.py``). auto: twice the
                                           measured time of a request that had the worker to itself; 0: off
COMPRESSOR_RETRY_AFTER_S       1           the ``Retry-After`` a refused request is told
COMPRESSOR_DRAIN_S             2           on SIGTERM: seconds /readyz answers 503 while requests are still
                                           accepted (a load balancer's time to stop routing here), before the
                                           worker stops accepting and finishes what it holds
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

Admission control (``bentos/admission.py``) tells an overload from a deep queue by rate, not depth. A worker
near its capacity holds a deep queue and answers it in large batches; nothing of that may be refused. Once its
queue is as deep as where it reaches its capacity (8 requests per intra-op thread, at least 16: the clients
of the closed-loop measurement that defines the capacity never make it judge itself overloaded), a worker
compares the rate requests arrive at with the capacity it measured (the most it answered over a busy second):
over 1.3 times that is an overload, and the latency budget applies until arrivals fall back to the capacity.
A surge from idle is an overload as soon as the queue is that deep (see ``bentos/admission.py``).
``COMPRESSOR_MAX_IN_FLIGHT`` bounds the count beyond that, the safety net for an overload the rate test misses.
What this gives under steady, random, bursty and ramping overload is measured in the README's tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ernie_common.env import usable_cpus
from ernie_common.errors import UserError

PREFIX = "COMPRESSOR_"
GPU_BACKENDS = ("tensorrt", "cuda-graphs")  # runtime back ends that only run on a GPU
CORES_PER_WORKER = 4  # default CPU cores per server process (see the module docstring)
DEEP_PER_THREAD = 8  # the queue at which a worker reaches its capacity, per intra-op thread (module docstring)
DEEP_AT_LEAST = 16  # ... and at least this: the clients of a closed-loop capacity measurement
HELD_PER_DEEP = 16  # the default bound on what a worker holds, in multiples of that depth


def capacity_depth(threads: int) -> int:
    """Requests held at which a worker with ``threads`` intra-op threads reaches its capacity."""
    return max(DEEP_AT_LEAST, DEEP_PER_THREAD * threads)


class ServiceConfigError(UserError):
    """The serving environment is misconfigured; the message names the variable to fix."""


def on_gpu(backend: str, driver: Path = Path("/proc/driver/nvidia/version")) -> bool:
    """Whether the model will run on a GPU: asked for (tensorrt, cuda-graphs), or an NVIDIA driver is loaded
    (then ``runtime.Classifier`` prefers the GPU). Read from the driver, not torch: importing torch in the
    process manager would cost seconds per start, and a CPU image has no torch."""
    return backend in GPU_BACKENDS or (backend != "torch" and driver.exists())


class Settings(BaseSettings):
    """The service's settings; ``None`` for ``workers``/``threads``/``max_in_flight`` means "auto" until
    :meth:`from_env` resolves them for the machine."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    model_dir: str | None = None
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt", "cuda-graphs"] = "auto"
    variant: Literal["fp32", "optimized", "fp16", "int8"] | None = None
    max_items: int = Field(64, ge=1)
    max_chars: int = Field(10_000, ge=1)
    batching: bool = True
    max_batch_size: int = Field(64, ge=2)
    max_latency_ms: int = Field(10_000, ge=1)
    max_in_flight: int | None = Field(None, ge=0)
    queue_budget_ms: float | None = Field(None, ge=0)
    retry_after_s: int = Field(1, ge=0)
    drain_s: float = Field(2.0, ge=0)
    workers: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)
    access_log: bool = True

    @field_validator("workers", "threads", "max_in_flight", "queue_budget_ms", mode="before")
    @classmethod
    def _auto(cls, value):
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, cpus: int | None = None,
                 gpu: bool | None = None) -> "Settings":
        """The settings of ``env`` (default: this process's environment) with the automatic ones resolved for
        ``cpus`` cores (default: the usable ones) and a GPU or not (default: see :func:`on_gpu`)."""
        try:
            if env is None:
                read = cls()
            else:
                read = cls.model_validate({k[len(PREFIX):].lower(): v for k, v in env.items()
                                           if k.startswith(PREFIX) and v.strip()})
        except ValidationError as exc:
            raise ServiceConfigError(_one_line(exc)) from None
        cpus = cpus or usable_cpus()
        gpu = on_gpu(read.backend) if gpu is None else gpu
        # a GPU serves best from one process that batches; on CPUs a process per CORES_PER_WORKER cores
        workers = read.workers or (1 if gpu else max(1, cpus // CORES_PER_WORKER))
        threads = read.threads or max(1, cpus // workers)
        in_flight = HELD_PER_DEEP * capacity_depth(threads) if read.max_in_flight is None else read.max_in_flight
        return read.model_copy(update={"workers": workers, "threads": threads, "max_in_flight": in_flight})

    @property
    def deep_queue(self) -> int:
        """Requests held at which a worker reaches its capacity: from there on, the rate they arrive at tells
        whether it is overloaded (``bentos/admission.py``); never more than ``max_in_flight``."""
        deep = capacity_depth(self.threads or 1)
        return min(deep, self.max_in_flight) if self.max_in_flight else deep

    def public(self) -> dict:
        """What /model_info reports."""
        return {"batching": {"enabled": self.batching, "max_batch_size": self.max_batch_size,
                             "max_latency_ms": self.max_latency_ms, "max_items_per_request": self.max_items,
                             "max_chars_per_text": self.max_chars},
                "admission": {"max_in_flight_per_worker": self.max_in_flight, "deep_queue": self.deep_queue,
                              "queue_budget_ms": "auto" if self.queue_budget_ms is None else self.queue_budget_ms,
                              "retry_after_s": self.retry_after_s},
                "workers": self.workers, "threads_per_worker": self.threads}


def _one_line(exc: ValidationError) -> str:
    """``COMPRESSOR_X='value' <what is wrong>: <the fix>`` for the first wrong variable."""
    first = exc.errors(include_url=False)[0]
    field = str(first["loc"][0])
    name, value, kind = PREFIX + field.upper(), first.get("input"), first["type"]
    minimum = next((m.ge for m in Settings.model_fields[field].metadata if hasattr(m, "ge")), None)
    at_least = f" >= {minimum}" if minimum is not None else ""
    if kind in ("int_parsing", "int_from_float"):
        return f"{name}={value!r} is not an integer: set it to a whole number{at_least}"
    if kind == "float_parsing":
        return f"{name}={value!r} is not a number: set it to a number{at_least}"
    if kind == "greater_than_equal":
        return f"{name}={value!r} is below {minimum}: set it to a number{at_least}"
    if kind == "bool_parsing":
        return f"{name}={value!r} is not a flag: set it to 1 or 0"
    if kind == "literal_error":
        return f"{name}={value!r} is not one of {first['ctx']['expected']}: pick one"
    return f"{name}={value!r}: {first['msg']}"
