"""What a finished run hands out: the teacher's dev metrics, ``final/`` (the last stage's student) and the report,
and ``final/``'s model card (compressor/run/card.py).

Rank 0 writes, atomically (a temp file or folder, then a rename), and every rank waits for it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification

from compressor.run.card import write_model_card
from compressor.run.context import RunContext
from compressor.run.fingerprint import fingerprint, model_identity, task_identity
from compressor.run.report import build_report, write_report
from compressor.run.runstate import FINAL_DIR, PRUNE_MARKER
from ernie_common.io import atomic_dir, read_json, write_json_atomic
from ernie_common.params import count_params

TEACHER_DEV = "teacher_dev.json"


def teacher_dev(ctx: RunContext) -> dict[str, float]:
    """The fine-tuned teacher's dev metrics, measured once and kept in ``teacher_dev.json`` under the fingerprint
    of what they depend on (the teacher's weights, the task's dev data, the evaluation length): a cache, so a
    stale one is measured again rather than refused."""
    path = ctx.out / TEACHER_DEV
    key = fingerprint({"teacher": model_identity(ctx.train_teacher()), "task": task_identity(ctx.recipe.task),
                       "max_seq_length": ctx.eval_length})
    kept = read_json(path) if path.is_file() else {}
    if ctx.main and kept.get("fingerprint") != key:
        write_json_atomic(path, {"fingerprint": key, "dev": ctx.dev_metrics(ctx.teacher("finetuned"))})
    ctx.barrier()
    return read_json(path)["dev"]


def publish_final(ctx: RunContext, last_stage: Path) -> Path:
    """Copy the last stage's student to ``final/`` (an HF classifier with its tokenizer and dev metrics)."""
    final = ctx.out / FINAL_DIR
    if ctx.main:
        with atomic_dir(final, if_exists="replace") as tmp:
            AutoModelForSequenceClassification.from_pretrained(last_stage).save_pretrained(tmp)
            ctx.tokenizer.save_pretrained(tmp)
            shutil.copy(last_stage / "dev_metrics.json", tmp / "dev_metrics.json")
    ctx.barrier()
    return final


def publish_report(ctx: RunContext, stages: list[dict[str, Any]], final: Path, pruned: Path | None) -> dict[str, Any]:
    """``report.json``, ``report.md`` and the plot (compressor/run/report.py) from the finished folders, and the
    model card in ``final/``."""
    teacher = ctx.teacher("finetuned")
    student = AutoModelForSequenceClassification.from_pretrained(final)
    report = build_report(
        task=ctx.task.name, metric=ctx.task.metric,
        teacher={"path": str(ctx.train_teacher()), "params": count_params(teacher), "dev": teacher_dev(ctx),
                 "finetune_seconds": ctx.finetune_seconds},
        stages=stages,
        student={"path": str(final), "params": count_params(student), "dev": stages[-1]["dev"]},
        pruned=read_json(pruned / PRUNE_MARKER) if pruned is not None else None,
    )
    if ctx.main:
        write_report(report, ctx.out)
        write_model_card(final, report, ctx.recipe, ctx.task)
    ctx.barrier()
    return report
