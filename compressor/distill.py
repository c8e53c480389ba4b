"""ERNIE-Tiny progressive distillation: ``python -m compressor.distill --config RECIPE.yaml --output-dir DIR``.

A recipe's stages run in order; each is (teacher, data, losses with weights, schedule) and starts from
the previous stage's student. The run directory holds ``teacher/`` (when fine-tuned here), one folder per
stage (student HF dir, ``projections.pt``, ``dev_metrics.json``, TensorBoard ``logs/``, and ``stage.json``
written last: its presence means "finished"), ``final/`` (the last stage's student) and the report.

Rerunning the same command resumes: finished stages are skipped, an interrupted stage continues from
its last Trainer checkpoint. Under ``torchrun`` every rank runs this file unchanged; only rank 0 writes.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, TrainerCallback)
from transformers.trainer_utils import get_last_checkpoint

from compressor import augment
from compressor.config import ConfigError, Recipe, StageConfig, load_recipe
from compressor.data import DataError, general_corpus, load_task_data, task_spec, tokenize_task
from compressor.finetune import finetune_teacher
from ernie_common.io import atomic_dir, read_json, write_json_atomic
from ernie_common.params import count_params
from compressor.metrics import evaluate
from compressor.report import build_report, write_report
from compressor.student import (PROJECTIONS_FILE, StudentError, build_student, labels_match, layer_map_for,
                                projections_for, prune_student)
from compressor.tasks import Task
from compressor.trainer import DistillationModule, DistillationTrainer, distill_arguments, process_state

log = logging.getLogger(__name__)
STAGE_MARKER = "stage.json"
TEACHER_DEV = "teacher_dev.json"
PRUNED_DIR = "pruned"
PRUNE_MARKER = "prune.json"


class DistillError(ValueError):
    """A run that cannot go ahead as configured (e.g. a teacher trained for other labels); one line."""


# --------------------------------------------------------------------------- checks before any work


def preflight(recipe: Recipe) -> None:
    """Everything that can be checked from configs alone, so a bad run fails in seconds, not after GD."""
    task = task_spec(recipe.task)
    if recipe.teacher.finetuned:
        found = AutoConfig.from_pretrained(recipe.teacher.finetuned)
        if not labels_match(found, task):
            got = found.num_labels if task.is_regression else list(found.id2label.values())
            want = "1 output (regression)" if task.is_regression else list(task.labels)
            raise DistillError(f"teacher.finetuned {recipe.teacher.finetuned} has labels {got} but task {task.name} "
                               f"needs {want}; give a teacher fine-tuned on this task or set teacher.finetuned: null")
    for stage in recipe.stages:
        if stage.teacher == "pretrained" and stage.losses.get("soft"):
            raise DistillError(f"stage {stage.name!r}: the soft-label loss needs the fine-tuned teacher's logits; "
                               f"use teacher: finetuned")
    if any(s.losses.get("attention") for s in recipe.stages):
        t = AutoConfig.from_pretrained(recipe.teacher.finetuned or recipe.teacher.pretrained)
        s_heads, t_heads = recipe.student.num_attention_heads, t.num_attention_heads
        if max(s_heads, t_heads) % min(s_heads, t_heads):
            raise DistillError(f"attention loss: student heads {s_heads} and teacher heads {t_heads} must divide one "
                               f"another; change student.num_attention_heads or drop the attention loss")


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What the stages share: task data, tokenizer, teachers (loaded once), and rank coordination."""

    recipe: Recipe
    out: Path
    callbacks: list[TrainerCallback] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = process_state()
        self.device = self.state.device  # teachers live (and are evaluated) where training runs
        self.task: Task = task_spec(self.recipe.task)
        self.tokenizer = AutoTokenizer.from_pretrained(self.recipe.teacher.finetuned or self.recipe.teacher.pretrained)
        with self.state.main_process_first():
            self.task_data = load_task_data(self.recipe.task)
        self._tokenized: dict[int, Any] = {}
        self._augmented: dict[int, Any] = {}
        self._teachers: dict[str, Any] = {}
        self.eval_length = self.recipe.stages[-1].max_seq_length
        self.finetuned_path: str | None = self.recipe.teacher.finetuned
        self.finetune_seconds: float | None = None
        self.retrained: str | None = None  # the first stage this invocation trains; later stages must follow it
        self.collator = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
        self.tokenized(self.eval_length)  # on every rank now: rank-0-only code below must not hit its barrier

    @property
    def main(self) -> bool:
        return self.state.is_main_process

    def tokenized(self, max_seq_length: int):
        if max_seq_length not in self._tokenized:
            with self.state.main_process_first():
                self._tokenized[max_seq_length] = tokenize_task(self.task_data, self.tokenizer, max_seq_length)
        return self._tokenized[max_seq_length]

    def dev_metrics(self, model) -> dict[str, float]:
        return evaluate(model, self.tokenized(self.eval_length)["validation"], self.tokenizer, self.task)

    # ----------------------------------------------------------------- teachers

    def ensure_finetuned(self) -> str:
        if self.finetuned_path is None:
            start = time.perf_counter()
            path, _ = finetune_teacher(self.recipe.teacher.pretrained, self.recipe.task, self.recipe.teacher.finetune,
                                       self.out / "teacher", seed=self.recipe.seed)
            self.state.wait_for_everyone()
            self.finetune_seconds = round(time.perf_counter() - start, 1)
            found = AutoConfig.from_pretrained(path)
            if not labels_match(found, self.task):
                raise DistillError(f"fine-tuned teacher {path} does not have task {self.task.name}'s labels; delete it and rerun")
            self.finetuned_path = path
        return self.finetuned_path

    def teacher(self, kind: str):
        """``pretrained`` (encoder only: hidden states and attentions) or ``finetuned`` (with its classifier)."""
        if kind not in self._teachers:
            if kind == "finetuned":
                model = AutoModelForSequenceClassification.from_pretrained(self.ensure_finetuned())
            else:
                model = AutoModel.from_pretrained(self.recipe.teacher.pretrained)
            self._teachers[kind] = model.eval().to(self.device)
        return self._teachers[kind]

    def teacher_dev(self) -> dict[str, float]:
        path = self.out / TEACHER_DEV
        if self.main and not path.is_file():
            write_json_atomic(path, self.dev_metrics(self.teacher("finetuned")))
        self.state.wait_for_everyone()
        return read_json(path)

    # ----------------------------------------------------------------- the pruned start

    def calibration_batches(self) -> list[dict[str, torch.Tensor]]:
        """``student.prune.samples`` rows of task training data (shuffled by the seed) or general-corpus blocks."""
        p = self.recipe.student.prune
        if p.calibration == "general":
            with self.state.local_main_process_first():
                blocks = general_corpus(self.recipe.general, self.tokenizer, p.max_seq_length)
            rows = blocks.shuffle(seed=self.recipe.seed).select(range(min(p.samples, len(blocks))))
        else:
            train = self.tokenized(p.max_seq_length)["train"]
            rows = train.shuffle(seed=self.recipe.seed).select(range(min(p.samples, len(train))))
            rows = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
        collate = DataCollatorWithPadding(self.tokenizer)
        return [collate(rows[i:i + p.batch_size]) for i in range(0, len(rows), p.batch_size)]

    def ensure_pruned(self) -> Path:
        """``student.init: pruned``: cut the student out of its teacher once (rank 0), into ``pruned/``: the student,
        its projections, its dev metrics before any training and ``prune.json`` (written last: "finished")."""
        folder = self.out / PRUNED_DIR
        if self.main and not (folder / PRUNE_MARKER).is_file():
            start = time.perf_counter()
            cfg = self.recipe.student
            teacher = self.teacher(cfg.prune_from)
            source = self.finetuned_path if cfg.prune_from == "finetuned" else self.recipe.teacher.pretrained
            student, projections, report = prune_student(cfg, teacher, self.task, self.calibration_batches(), source)
            with atomic_dir(folder, if_exists="replace") as tmp:  # an unfinished pruned/ is replaced
                student.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                torch.save(projections.state_dict(), tmp / PROJECTIONS_FILE)
                dev = self.dev_metrics(student)
                write_json_atomic(tmp / "dev_metrics.json", dev)
                write_json_atomic(tmp / PRUNE_MARKER, {**report, "prune_from": cfg.prune_from, "source": str(source),
                                                       "params": count_params(student), "dev": dev,
                                                       "seconds": round(time.perf_counter() - start, 1)})
            log.info("pruned student in %s: dev %s, layers %s", folder, dev, report["layers"])
        self.state.wait_for_everyone()
        return folder

    # ----------------------------------------------------------------- stages

    def augmented(self, max_seq_length: int):
        """The recipe's augmented rows (generated once, cached under ``augment/``), tokenised; labels NO_LABEL/NaN."""
        if max_seq_length not in self._augmented:
            with self.state.main_process_first():
                rows = augment.build(self.recipe.augment, self.task_data["train"], self.task, self.recipe.general,
                                     self.recipe.seed, self.out / "augment")
                tokenized = tokenize_task(datasets.DatasetDict(train=rows.remove_columns(augment.SOURCE_COLUMN)),
                                          self.tokenizer, max_seq_length)["train"]
            self._augmented[max_seq_length] = (tokenized, augment.sizes(rows))
        return self._augmented[max_seq_length]

    def train_data(self, stage: StageConfig):
        """The stage's rows and their count per source (task, transfer, mlm; the general corpus is not counted)."""
        if stage.data == "general":  # built once by each machine's first process, read from disk by all
            with self.state.local_main_process_first():
                return general_corpus(self.recipe.general, self.tokenizer, stage.max_seq_length), {}
        task_rows = self.tokenized(stage.max_seq_length)["train"]
        if not stage.augment:
            return task_rows, {"task": len(task_rows)}
        extra, sizes = self.augmented(stage.max_seq_length)
        extra = extra.cast(task_rows.features)
        return datasets.concatenate_datasets([task_rows, extra]), {"task": len(task_rows), **sizes}

    def stage_start(self, index: int):
        """The student a stage starts from (the first is built against the first stage's teacher), and where
        its projections come from (the previous stage, or a checkpoint student's own ``projections.pt``)."""
        if index == 0:
            transformers.set_seed(self.recipe.seed)
            cfg = self.recipe.student
            if cfg.init == "pruned":
                pruned = self.ensure_pruned()
                return AutoModelForSequenceClassification.from_pretrained(pruned), pruned
            first_teacher = self.teacher(self.recipe.stages[0].teacher)
            return build_student(cfg, first_teacher, self.task), cfg.checkpoint if cfg.init == "checkpoint" else None
        previous = self.out / self.recipe.stages[index - 1].name
        return AutoModelForSequenceClassification.from_pretrained(previous), previous

    def run_stage(self, index: int) -> dict[str, Any]:
        stage = self.recipe.stages[index]
        stage_dir = self.out / stage.name
        if (stage_dir / STAGE_MARKER).is_file():
            done = read_json(stage_dir / STAGE_MARKER)
            check_same_stage(stage, done, stage_dir)
            if self.retrained:
                raise DistillError(f"stage {stage.name!r} in {stage_dir} started from an older {self.retrained!r}, "
                                   f"which this run retrained; delete {stage_dir} (and the stage folders after it)")
            log.info("stage %s already finished in %s: skipped", stage.name, stage_dir)
            return done
        start = time.perf_counter()
        self.retrained = self.retrained or stage.name
        teacher = self.teacher(stage.teacher)
        student, previous = self.stage_start(index)
        module = DistillationModule(student, projections_for(student, teacher, previous), stage.losses,
                                    layer_map_for(student.config, teacher.config), stage.temperature)
        ckpt_dir = stage_dir / "checkpoints"
        train_rows, rows = self.train_data(stage)
        trainer = DistillationTrainer(
            model=module, teacher=teacher, args=distill_arguments(ckpt_dir, stage, self.recipe,
                                                                  logging_dir=str(stage_dir / "logs")),
            train_dataset=train_rows, data_collator=self.collator,
            callbacks=list(self.callbacks),
        )
        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if last:
            log.info("stage %s: resuming from %s", stage.name, last)
        result = trainer.train(resume_from_checkpoint=last)
        summary = {"name": stage.name, "recipe": dataclasses.asdict(stage), "teacher": stage.teacher,
                   "teacher_path": teacher.config._name_or_path, "data": stage.data, "losses": dict(stage.losses),
                   "steps": trainer.state.global_step, "train_loss": round(float(result.training_loss), 6), "rows": rows}
        if self.main:
            self.save_stage(stage_dir, module, summary, start)
        self.state.wait_for_everyone()
        return read_json(stage_dir / STAGE_MARKER)

    def save_stage(self, stage_dir: Path, module: DistillationModule, summary: dict[str, Any], start: float) -> None:
        module.student.save_pretrained(stage_dir)
        self.tokenizer.save_pretrained(stage_dir)
        torch.save(module.projections.state_dict(), stage_dir / PROJECTIONS_FILE)
        dev = self.dev_metrics(module.student)
        write_json_atomic(stage_dir / "dev_metrics.json", dev)
        summary.update(dev=dev, seconds=round(time.perf_counter() - start, 1))
        write_json_atomic(stage_dir / STAGE_MARKER, summary)
        shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)

    def publish_final(self) -> Path:
        """Copy the last stage's student to ``final/`` atomically (temp folder, then rename)."""
        final = self.out / "final"
        if self.main:
            src = self.out / self.recipe.stages[-1].name
            with atomic_dir(final, if_exists="replace") as tmp:
                AutoModelForSequenceClassification.from_pretrained(src).save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                shutil.copy(src / "dev_metrics.json", tmp / "dev_metrics.json")
        self.state.wait_for_everyone()
        return final

    def report(self, stages: list[dict[str, Any]], final: Path) -> dict[str, Any]:
        teacher = self.teacher("finetuned")
        student = AutoModelForSequenceClassification.from_pretrained(final)
        return build_report(
            task=self.task.name, metric=self.task.metric,
            teacher={"path": str(self.finetuned_path), "params": count_params(teacher), "dev": self.teacher_dev(),
                     "finetune_seconds": self.finetune_seconds},
            stages=stages,
            student={"path": str(final), "params": count_params(student), "dev": stages[-1]["dev"]},
            pruned=read_json(self.out / PRUNED_DIR / PRUNE_MARKER) if self.recipe.student.init == "pruned" else None,
        )


def check_same_stage(stage: StageConfig, done: dict[str, Any], stage_dir: Path) -> None:
    """A finished stage is reused only if it was trained with this recipe's settings for it; otherwise a rerun
    with a changed override would silently report the old stage."""
    before = done.get("recipe")
    if before is None:  # written before stage.json recorded its settings
        return
    now = dataclasses.asdict(stage)
    changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    if changed:
        diff = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise DistillError(f"stage {stage.name!r} in {stage_dir} was trained with other settings ({diff}); "
                           f"use a new --output-dir, or delete {stage_dir} and the stage folders after it")


def run(recipe: Recipe, output_dir: str | Path, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """All stages (resuming a previous run in ``output_dir``), ``final/`` and the report; returns the report."""
    preflight(recipe)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = Run(recipe, out, list(callbacks or []))
    r.ensure_finetuned()
    r.teacher_dev()
    if recipe.student.init == "pruned":
        r.ensure_pruned()
    stages = [r.run_stage(i) for i in range(len(recipe.stages))]
    final = r.publish_final()
    report = r.report(stages, final)
    if r.main:
        write_report(report, out)
    r.state.wait_for_everyone()
    return report


# --------------------------------------------------------------------------- CLI

USER_ERRORS = (ConfigError, DataError, StudentError, DistillError, OSError)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compressor.distill", description=__doc__.splitlines()[0],
                                epilog="Any recipe key can be overridden: --stages.tsd.epochs 3 --task.max_train_samples 2000")
    p.add_argument("--config", required=True, help="YAML recipe (see compressor/configs/)")
    p.add_argument("--output-dir", required=True, help="run directory; rerun the same command to resume")
    args, overrides = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_warning()
    try:
        recipe = load_recipe(args.config, overrides)
        run(recipe, args.output_dir)
    except USER_ERRORS as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    if process_state().is_main_process:
        print((Path(args.output_dir) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
