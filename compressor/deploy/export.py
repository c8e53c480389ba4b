"""``--export``: ``final/`` into ``export/`` with ``runtime.export``, a step of the run like the stages.

Its inputs are ``final/``'s (the last stage's fingerprint) and the recipe's ``export:`` settings. After
``runtime.export`` has built the folder (under a temporary name, renamed when every variant passed parity),
``fingerprint.json``, the model card and ``export.json`` are written into it, the marker last: its presence
means "finished". A rerun reuses a finished export of the same fingerprint. One made from other inputs is
built again rather than refused as a stale stage is: nothing in the run is built from it, and it takes seconds.

Parity is measured on the task's dev rows at the report's evaluation length, so the export's PyTorch accuracy
is the report's dev figure and each variant's accuracy sits beside it. A variant below its parity floor fails
the run with ``ExportError``'s one line. Under ``torchrun`` the main process exports while the others wait.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from compressor.run import DistillError
from compressor.run.card import write_model_card
from compressor.run.context import RunContext
from compressor.run.fingerprint import flatten, stage_fingerprint
from compressor.run.runstate import FINAL_DIR, Result, StaleError, Status
from ernie_common.io import write_json_atomic
from ernie_common.tables import Examples

log = logging.getLogger(__name__)
EXPORT_DIR, EXPORT_MARKER = "export", "export.json"


def export_result(recipe, out: str | Path) -> Result:
    """``export/``: made from ``final/`` (the last stage's student) with the recipe's ``export:`` settings."""
    inputs = {"final": stage_fingerprint(recipe, len(recipe.stages) - 1),
              **flatten({"export": recipe.export.model_dump()})}
    return Result("the export", Path(out) / EXPORT_DIR, EXPORT_MARKER, inputs)


def is_finished(result: Result) -> bool:
    """Finished under these inputs; an export made from other inputs counts as not made."""
    try:
        return result.status() is Status.FINISHED
    except StaleError:
        return False


def dev_rows(ctx: RunContext) -> Examples:
    """The task's dev rows the report measured (texts or pairs, and class ids where it is no regression)."""
    dev = ctx.task_data["validation"]
    pair = "text_b" in dev.column_names
    texts = list(zip(dev["text_a"], dev["text_b"])) if pair else list(dev["text_a"])
    labels = None if ctx.task.is_regression else [str(int(label)) for label in dev["label"]]
    return Examples(texts, labels, ("text_a", "text_b") if pair else ("text_a",), f"{ctx.task.name} dev rows")


def export_options(ctx: RunContext):
    from runtime.export import ExportOptions

    cfg, rows = ctx.recipe.export, dev_rows(ctx)
    return ExportOptions(optimize=cfg.optimize, fp16=cfg.fp16, int8=cfg.int8, int8_min_agreement=cfg.int8_min_agreement,
                         max_seq=ctx.eval_length, parity_data=rows, parity_limit=len(rows.texts), overwrite=True)


def export_final(ctx: RunContext, report: dict[str, Any]) -> tuple[Result, bool]:
    """``export/`` of this run (made now, or reused) and whether it was reused."""
    from runtime.export import export

    result = export_result(ctx.recipe, ctx.out)
    reused = is_finished(result)
    try:
        if ctx.main and not reused:
            start = time.perf_counter()
            manifest = export(ctx.out / FINAL_DIR, result.folder, export_options(ctx), log=log.info)
            result.record()
            write_model_card(result.folder, report, ctx.recipe, ctx.task, manifest)
            write_json_atomic(result.folder / EXPORT_MARKER, {
                "fingerprint": result.fingerprint, "variants": manifest["variants"],
                "parity": {v: p.get("status") for v, p in manifest["parity"].items()},
                "seconds": round(time.perf_counter() - start, 1)})
    finally:
        ctx.barrier()  # every rank is released, the export done or failed
    if not (result.folder / EXPORT_MARKER).is_file():
        raise DistillError(f"the export into {result.folder} failed on the main process: see its error")
    if reused:
        log.info("the export in %s is finished for these inputs: reused", result.folder)
    return result, reused
