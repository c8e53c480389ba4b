"""The steps that make a run's student: the pruned start (``student.init: pruned``) and each distillation stage.

A stage is data (teacher, data, losses with weights, schedule; compressor/recipe/schema.py); this module turns one
into a :class:`DistillationModule` and a :class:`DistillationTrainer` run and saves its folder. Whether a step
runs at all, resumes or is reused is decided before (compressor/run/runstate.py); here it is only carried out.
Under ``torchrun`` every rank trains; only rank 0 writes the folder, and the others wait for it.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding
from transformers.trainer_utils import get_last_checkpoint

from compressor.modeling.student import PROJECTIONS_FILE, build_student, layer_map_for, projections_for, prune_student
from compressor.modeling.trainer import DistillationModule, DistillationTrainer, training_arguments
from compressor.run.context import RunContext
from compressor.run.runstate import CHECKPOINTS, PRUNE_MARKER, STAGE_MARKER, Result, Status
from ernie_common.io import atomic_dir, read_json, write_json_atomic
from ernie_common.params import count_params

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the pruned start


def calibration_batches(ctx: RunContext) -> list[dict[str, torch.Tensor]]:
    """``student.prune.samples`` rows of task training data (shuffled by the seed) or general-corpus blocks."""
    p = ctx.recipe.student.prune
    if p.calibration == "general":
        blocks = ctx.general(p.max_seq_length)
        rows = blocks.shuffle(seed=ctx.recipe.seed).select(range(min(p.samples, len(blocks))))
    else:
        train = ctx.tokenized(p.max_seq_length)["train"]
        rows = train.shuffle(seed=ctx.recipe.seed).select(range(min(p.samples, len(train))))
        rows = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
    collate = DataCollatorWithPadding(ctx.tokenizer)
    return [collate(rows[i:i + p.batch_size]) for i in range(0, len(rows), p.batch_size)]


def make_pruned_start(ctx: RunContext, result: Result) -> Path:
    """Cut the student out of its teacher (rank 0) into ``pruned/``: the student, its projections, its dev
    metrics before any training, ``fingerprint.json`` and ``prune.json`` (last: "finished"). Built in a temp
    folder and renamed, so a killed cut leaves nothing to resume: it starts again."""
    folder = result.folder
    if ctx.main:
        start = time.perf_counter()
        cfg = ctx.recipe.student
        teacher = ctx.teacher(cfg.prune_from)
        source = ctx.teacher_source(cfg.prune_from)
        student, projections, report = prune_student(cfg, teacher, ctx.task, calibration_batches(ctx), source)
        with atomic_dir(folder, if_exists="replace") as tmp:  # an unfinished pruned/ is replaced
            student.save_pretrained(tmp)
            ctx.tokenizer.save_pretrained(tmp)
            torch.save(projections.state_dict(), tmp / PROJECTIONS_FILE)
            dev = ctx.dev_metrics(student)
            write_json_atomic(tmp / "dev_metrics.json", dev)
            result.record(tmp)
            write_json_atomic(tmp / PRUNE_MARKER, {**report, "prune_from": cfg.prune_from, "source": str(source),
                                                   "params": count_params(student), "dev": dev,
                                                   "fingerprint": result.fingerprint,
                                                   "seconds": round(time.perf_counter() - start, 1)})
        log.info("pruned student in %s: dev %s, layers %s", folder, dev, report["layers"])
    ctx.barrier()
    return folder


# --------------------------------------------------------------------------- a distillation stage


def stage_start(ctx: RunContext, index: int, pruned: Path | None):
    """The student stage ``index`` starts from and where its projections come from: the previous stage's folder;
    for the first stage the pruned start, or a student built against the first stage's teacher (with the
    checkpoint student's own ``projections.pt`` when ``init: checkpoint``)."""
    if index > 0:
        previous = ctx.out / ctx.recipe.stages[index - 1].name
        return AutoModelForSequenceClassification.from_pretrained(previous), previous
    transformers.set_seed(ctx.recipe.seed)
    if pruned is not None:
        return AutoModelForSequenceClassification.from_pretrained(pruned), pruned
    cfg = ctx.recipe.student
    first_teacher = ctx.teacher(ctx.recipe.stages[0].teacher)
    return build_student(cfg, first_teacher, ctx.task), cfg.checkpoint if cfg.init == "checkpoint" else None


def run_stage(ctx: RunContext, index: int, result: Result, status: Status, pruned: Path | None) -> dict[str, Any]:
    """Train stage ``index`` from its start (``fresh``) or its last checkpoint (``resume``), save its folder and
    return its ``stage.json``. ``fingerprint.json`` is written before training, so a killed stage is checked
    against the inputs it was started with."""
    stage = ctx.recipe.stages[index]
    stage_dir = result.folder
    start = time.perf_counter()
    if ctx.main:
        result.record()
    teacher = ctx.teacher(stage.teacher)
    student, previous = stage_start(ctx, index, pruned)
    module = DistillationModule(student, projections_for(student, teacher, previous), stage.losses,
                                layer_map_for(student.config, teacher.config), stage.temperature)
    ckpt_dir = stage_dir / CHECKPOINTS
    train_rows, rows = ctx.train_data(stage)
    trainer = DistillationTrainer(
        model=module, teacher=teacher, train_dataset=train_rows, data_collator=ctx.collator, callbacks=list(ctx.callbacks),
        args=training_arguments(ckpt_dir, stage, ctx.recipe, logging_dir=str(stage_dir / "logs")),
    )
    last = get_last_checkpoint(str(ckpt_dir)) if status is Status.RESUME else None
    if last:
        log.info("stage %s: resuming from %s", stage.name, last)
    outcome = trainer.train(resume_from_checkpoint=last)
    summary = {"name": stage.name, "recipe": dataclasses.asdict(stage), "teacher": stage.teacher,
               "teacher_path": teacher.config._name_or_path, "data": stage.data, "losses": dict(stage.losses),
               "steps": trainer.state.global_step, "train_loss": round(float(outcome.training_loss), 6), "rows": rows,
               "fingerprint": result.fingerprint}
    if ctx.main:
        save_stage(ctx, stage_dir, module, summary, start)
    ctx.barrier()
    return read_json(stage_dir / STAGE_MARKER)


def save_stage(ctx: RunContext, stage_dir: Path, module: DistillationModule, summary: dict[str, Any], start: float) -> None:
    """The student (an ordinary HF classifier with the tokenizer), its projections and dev metrics, then
    ``stage.json`` last (its presence means "finished"); the checkpoints go."""
    module.student.save_pretrained(stage_dir)
    ctx.tokenizer.save_pretrained(stage_dir)
    torch.save(module.projections.state_dict(), stage_dir / PROJECTIONS_FILE)
    dev = ctx.dev_metrics(module.student)
    write_json_atomic(stage_dir / "dev_metrics.json", dev)
    summary.update(dev=dev, seconds=round(time.perf_counter() - start, 1))
    write_json_atomic(stage_dir / STAGE_MARKER, summary)
    shutil.rmtree(stage_dir / CHECKPOINTS, ignore_errors=True)
