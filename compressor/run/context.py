"""What a run's steps share, loaded once: the tokenizer, task data (tokenised per length), augmented rows, the
general corpus, the teachers on the training device, dev evaluation, and this process's place in a DDP job.

Nothing here decides what to train or whether a result is stale (compressor/run/runstate.py does); it only
loads things, so the stage runner, the pruner and publishing ask for them by what they are.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
)

from compressor.data import augment
from compressor.data.corpus import general_corpus
from compressor.data.task_data import load_task_data, task_spec, tokenize_task
from compressor.modeling.metrics import evaluate
from compressor.modeling.student import labels_match
from compressor.modeling.trainer import process_state
from compressor.recipe.schema import Recipe, StageConfig
from compressor.recipe.tasks import Task
from compressor.run import DistillError
from compressor.run.finetune import finetune_teacher
from compressor.run.fingerprint import augment_fingerprint
from compressor.run.runstate import AFTER_TEACHER, TEACHER_DIR

AUGMENT_DIR = "augment"


@dataclass
class RunContext:
    """The shared, loaded-once pieces of one run in ``out``; every rank of a ``torchrun`` job builds its own."""

    recipe: Recipe
    out: Path
    callbacks: list[TrainerCallback] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
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
        self.collator = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
        self.tokenized(self.eval_length)  # on every rank now: rank-0-only code later must not hit its barrier

    @property
    def main(self) -> bool:
        return self.state.is_main_process

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    # ----------------------------------------------------------------- data

    def tokenized(self, max_seq_length: int):
        if max_seq_length not in self._tokenized:
            with self.state.main_process_first():
                self._tokenized[max_seq_length] = tokenize_task(self.task_data, self.tokenizer, max_seq_length)
        return self._tokenized[max_seq_length]

    def general(self, max_seq_length: int) -> datasets.Dataset:
        """The packed general corpus: built once by each machine's first process, read from disk by all."""
        with self.state.local_main_process_first():
            return general_corpus(self.recipe.general, self.tokenizer, max_seq_length)

    def augmented(self, max_seq_length: int):
        """The recipe's augmented rows (generated once, cached under ``augment/``), tokenised; labels NO_LABEL/NaN."""
        if max_seq_length not in self._augmented:
            with self.state.main_process_first():
                rows = augment.build(self.recipe.augment, self.task_data["train"], self.task, self.recipe.general,
                                     self.recipe.seed, self.out / AUGMENT_DIR, key=augment_fingerprint(self.recipe))
                tokenized = tokenize_task(datasets.DatasetDict(train=rows.remove_columns(augment.SOURCE_COLUMN)),
                                          self.tokenizer, max_seq_length)["train"]
            self._augmented[max_seq_length] = (tokenized, augment.sizes(rows))
        return self._augmented[max_seq_length]

    def train_data(self, stage: StageConfig):
        """The stage's rows and their count per source (task, transfer, mlm; the general corpus is not counted)."""
        if stage.data == "general":
            return self.general(stage.max_seq_length), {}
        task_rows = self.tokenized(stage.max_seq_length)["train"]
        if not stage.augment:
            return task_rows, {"task": len(task_rows)}
        extra, sizes = self.augmented(stage.max_seq_length)
        extra = extra.cast(task_rows.features)
        return datasets.concatenate_datasets([task_rows, extra]), {"task": len(task_rows), **sizes}

    # ----------------------------------------------------------------- teachers

    def train_teacher(self) -> str:
        """The fine-tuned teacher's folder: the recipe's, or ``teacher/`` fine-tuned here (once; reused after)."""
        if self.finetuned_path is None:
            start = time.perf_counter()
            path, _ = finetune_teacher(self.recipe, self.out / TEACHER_DIR, fix=AFTER_TEACHER)
            self.barrier()
            self.finetune_seconds = round(time.perf_counter() - start, 1)
            if not labels_match(AutoConfig.from_pretrained(path), self.task):
                raise DistillError(f"fine-tuned teacher {path} does not have task {self.task.name}'s labels; delete it and rerun")
            self.finetuned_path = path
        return self.finetuned_path

    def teacher(self, kind: str):
        """``pretrained`` (encoder only: hidden states and attentions) or ``finetuned`` (with its classifier),
        in eval mode on the training device."""
        if kind not in self._teachers:
            if kind == "finetuned":
                model = AutoModelForSequenceClassification.from_pretrained(self.train_teacher())
            else:
                model = AutoModel.from_pretrained(self.recipe.teacher.pretrained)
            self._teachers[kind] = model.eval().to(self.device)
        return self._teachers[kind]

    def teacher_source(self, kind: str) -> str:
        return self.train_teacher() if kind == "finetuned" else self.recipe.teacher.pretrained

    # ----------------------------------------------------------------- evaluation

    def dev_metrics(self, model) -> dict[str, float]:
        """The task's dev metrics of any classifier, at the last stage's sequence length (so every stage, the
        pruned start and the teacher are measured alike)."""
        return evaluate(model, self.tokenized(self.eval_length)["validation"], self.tokenizer, self.task)
