"""Atomic writes: a file or folder is either complete or absent, never half-written.

Each write goes to a temporary name beside the target (same file system, name starting with a dot so
directory listings and copies skip it) and is renamed onto the target with ``os.replace``, which is atomic.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

IfExists = Literal["replace", "keep", "error"]


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The temporary name keeps ``path``'s suffix, so writers that pick a format from it (``savefig``) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON with a final newline."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextmanager
def atomic_dir(path: str | os.PathLike, if_exists: IfExists = "error") -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path``; when the block ends without an error it is
    renamed to ``path``, otherwise deleted.

    ``if_exists`` says what happens when ``path`` is there by then: ``"replace"`` it (the old folder is moved
    aside first, then deleted), ``"keep"`` it and drop the new one (another process finished the same build
    first), or ``"error"`` (FileExistsError; nothing is left behind).
    """
    if if_exists not in ("replace", "keep", "error"):
        raise ValueError(f"if_exists={if_exists!r}: use 'replace', 'keep' or 'error'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield work
        work.chmod(0o755)  # mkdtemp makes it private; the published folder gets ordinary permissions
        _publish(work, path, if_exists)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(work: Path, path: Path, if_exists: IfExists) -> None:
    if not path.exists():
        try:
            os.replace(work, path)
            return
        except OSError:  # someone else published first (a non-empty folder cannot be replaced)
            if not path.exists():
                raise
    if if_exists == "keep":
        return
    if if_exists == "error":
        raise FileExistsError(f"{path} already exists: remove it or choose another path")
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    try:
        os.replace(path, old / path.name)
        os.replace(work, path)
    finally:
        shutil.rmtree(old, ignore_errors=True)


def readable_size(n_bytes: float) -> str:
    """``n_bytes`` for a log line or a table: ``"512 B"``, ``"302.3 KiB"``, ``"6.80 GiB"``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}" if unit == "GiB" else f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} B"
