"""A finished run's student taken further, as the command line asks: exported, stored and built, pushed.

:class:`Delivery` is what was asked (``--export``, ``--bento [NAME]``, ``--push-to-hub REPO``);
:meth:`Delivery.check` runs before any work, :func:`deliver` after the report. The model store is labelled
with the export's fingerprint, so a rerun of the same command stores nothing new, and a changed input (the
recipe, the data, the export settings) stores a new version.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bentos.store import DEFAULT_NAME, build_bento, serve_command, store_model
from compressor.deploy.export import export_final
from compressor.deploy.hub import check_hub, push_folder
from compressor.run.context import RunContext
from compressor.run.runstate import FINAL_DIR

__all__ = ["DEFAULT_NAME", "Delivery", "deliver", "delivery_lines"]  # DEFAULT_NAME: the store's, for the CLIs


@dataclass(frozen=True)
class Delivery:
    export: bool = False
    """Export ``final/`` into ``export/`` (ONNX variants with parity, a model card)."""
    bento: str | None = None
    """Store the export in BentoML's model store under this name (exports first)."""
    build: bool = True
    """With ``bento``: also build a Bento (``bentoml build``; locking its packages needs a package index)."""
    push_to_hub: str | None = None
    """Push ``final/`` with its model card to this Hugging Face Hub repository."""

    @property
    def exports(self) -> bool:
        return self.export or self.bento is not None

    def check(self) -> None:
        """What can be known before any work: a push that cannot happen stops the run now, in one line."""
        if self.push_to_hub:
            check_hub(self.push_to_hub)


def deliver(ctx: RunContext, report: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
    """Carry ``delivery`` out (the main process stores and pushes; every rank waits for the export); what went
    where: ``export`` (folder), ``fingerprint``, ``export_reused``, ``model`` (store tag), ``serve`` (the
    command), ``bento`` and ``bento_build`` (a line), ``hub`` (the commit's URL)."""
    done: dict[str, Any] = {}
    if delivery.exports:
        result, reused = export_final(ctx, report)
        done.update(export=str(result.folder), fingerprint=result.fingerprint, export_reused=reused)
    if not ctx.main:
        return done
    if delivery.bento:
        tag = store_model(done["export"], delivery.bento, done["fingerprint"])
        done.update(model=tag, serve=serve_command(tag, bentoml_cli()))
        if delivery.build:
            done["bento"], done["bento_build"] = build_bento(tag)
    if delivery.push_to_hub:
        done["hub"] = push_folder(ctx.out / FINAL_DIR, delivery.push_to_hub)
    return done


def bentoml_cli() -> str:
    """``bentoml`` where this environment's is the one on PATH, else the path of this environment's (a fresh
    clone's ``make demo`` runs in ``.venv`` without activating it)."""
    here = Path(sys.executable).parent / "bentoml"
    found = shutil.which("bentoml")
    if found and Path(found).resolve() == here.resolve():
        return "bentoml"
    return os.path.relpath(here) if here.is_relative_to(Path.cwd()) else str(here)


def delivery_lines(done: dict[str, Any]) -> list[str]:
    """What :func:`deliver` did, for the command's last lines."""
    lines = []
    if "export" in done:
        how = "reused (finished for these inputs)" if done["export_reused"] else "built, every variant through parity"
        lines.append(f"export: {done['export']} {how}; fingerprint {done['fingerprint']}")
    if "model" in done:
        lines.append(f"model store: {done['model']} (labelled fingerprint={done['fingerprint']})")
    if "bento_build" in done:
        lines.append(done["bento_build"])
    if "serve" in done:
        lines.append(f"serve it: {done['serve']}")
    if "hub" in done:
        lines.append(f"pushed final/ to the Hub: {done['hub']}")
    return lines
