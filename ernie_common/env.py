"""What a measurement ran on: installed library versions and facts about the machine.

Versions come from the installed distributions' metadata (``importlib.metadata``), so nothing is imported
to read them; a library that is not installed is recorded as ``None``. Benchmarks, export manifests and
result tables all record these, so figures can be compared across machines and runs.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Iterable

# What decides the numbers of a training run, an export or a benchmark.
LIBRARIES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "optimum", "optimum-onnx", "onnx",
             "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy")


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str | None]:
    """``{"python": ..., name: version or None}`` for each distribution name (as pip spells it)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 (``cpu.max``) or v1 CPU quota
    (a container's ``--cpus``)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:
        limit, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        quota = None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        try:
            limit = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
            quota = limit / period if limit > 0 and period > 0 else None
        except (OSError, ValueError):
            pass
    if quota:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name where Linux says it, else what ``platform`` knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu() -> dict[str, str | None]:
    """The CUDA GPU torch sees (name, CUDA version, compute capability), all ``None`` without one or without
    torch (a CPU serving image has none)."""
    try:
        import torch
    except ImportError:
        return {"gpu": None, "cuda": None, "capability": None}
    if not torch.cuda.is_available():
        return {"gpu": None, "cuda": torch.version.cuda, "capability": None}
    return {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
            "capability": ".".join(map(str, torch.cuda.get_device_capability()))}


def machine() -> dict[str, str | int | None]:
    """When and where: UTC date, host, CPU model, usable cores and the GPU (see :func:`gpu`)."""
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "cpu": cpu_name(), "cores": usable_cpus(), **gpu()}
