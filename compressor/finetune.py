"""Fine-tune a pretrained encoder into a task teacher: ``python -m compressor.finetune``.

The output directory is a standard HF sequence-classification model (with ``id2label``) plus
``dev_metrics.json``; that file is written last, so its presence means "finished" and a rerun returns the
finished teacher instead of training again. An interrupted run resumes from its last Trainer checkpoint.
Both only when the teacher's inputs (pretrained model, task data, settings, seed) are the ones recorded in
its ``fingerprint.json``; otherwise one line says what changed (see compressor/runstate.py).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import torch
import transformers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)
from transformers.trainer_utils import get_last_checkpoint

from compressor.config import ConfigError, FinetuneConfig, TaskConfig, resolve_model_path
from compressor.data import DataError, load_task_data, task_spec, tokenize_task
from ernie_common.io import read_json, write_json_atomic
from compressor.metrics import trainer_metrics
from compressor.runstate import CHECKPOINTS, Status, StaleError, teacher_result
from compressor.trainer import logging_dir_arguments, warmup_arguments
from compressor.tasks import GLUE_TASKS, Task

log = logging.getLogger(__name__)
METRICS_FILE = "dev_metrics.json"


def label_maps(task: Task) -> dict:
    """Config kwargs (for ``from_pretrained`` or a config class) that give a classifier the task's labels
    (regression: one output), its task name (HF's ``finetuning_task``) and its input kind, single text or
    pair, as ``task_specific_params["text-classification"]["input_kind"]``: ``runtime`` reads it to refuse
    the wrong request shape. Only attributes every HF config has, so ``from_pretrained`` accepts them all."""
    kind = {"task_specific_params": {"text-classification": {"input_kind": "pair" if task.is_pair else "single"}},
            "finetuning_task": task.name}
    if task.is_regression:
        return {"num_labels": 1, "problem_type": "regression", **kind}
    return {"num_labels": task.num_labels, "id2label": dict(enumerate(task.labels)),
            "label2id": {name: i for i, name in enumerate(task.labels)}, **kind}


def finetune_teacher(pretrained: str, task_cfg: TaskConfig, ft: FinetuneConfig, output_dir: str | Path,
                     seed: int = 42, report_to: list[str] | None = None, fix: str = "") -> tuple[str, dict[str, float]]:
    """Fine-tune ``pretrained`` on the task; returns (output_dir, dev metrics). Reuses a finished run and resumes
    an interrupted one when their inputs are unchanged; raises :class:`StaleError` when they changed."""
    output_dir = Path(output_dir)
    pretrained = resolve_model_path(pretrained)
    result = teacher_result(pretrained, task_cfg, ft, seed, output_dir, fix)
    if result.status() is Status.FINISHED:
        log.info("fine-tuned teacher already in %s", output_dir)
        return str(output_dir), read_json(output_dir / METRICS_FILE)
    task = task_spec(task_cfg)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    data = tokenize_task(load_task_data(task_cfg), tokenizer, ft.max_seq_length)
    train = data["train"]
    if ft.max_train_samples is not None and ft.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(ft.max_train_samples))
    # a pretrained dir may already carry a head for other labels: it is replaced by the task's, initialised
    # from the seed (the Trainer seeds only after the model exists), so a rerun makes the same teacher
    transformers.set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(pretrained, ignore_mismatched_sizes=True,
                                                               **label_maps(task))

    ckpt_dir = output_dir / CHECKPOINTS
    args = TrainingArguments(
        output_dir=str(ckpt_dir), num_train_epochs=ft.epochs, max_steps=ft.max_steps,
        learning_rate=ft.learning_rate, per_device_train_batch_size=ft.batch_size,
        per_device_eval_batch_size=max(64, ft.batch_size), **warmup_arguments(ft.warmup_ratio),
        group_by_length=ft.group_by_length,
        weight_decay=ft.weight_decay, lr_scheduler_type="linear", eval_strategy="no", save_strategy="steps",
        save_steps=200, save_total_limit=1, logging_steps=50, **logging_dir_arguments(output_dir / "logs"),
        report_to=report_to if report_to is not None else ["tensorboard"], seed=seed,
        fp16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),  # CPU torchrun: a gloo group
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
    )
    if args.process_index == 0:  # before any checkpoint: a killed fine-tuning is checked against it
        result.record()
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=data["validation"],
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=trainer_metrics(task))
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    metrics = {k.removeprefix("eval_"): float(v) for k, v in trainer.evaluate().items()
               if k.removeprefix("eval_") in ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")}
    if trainer.is_world_process_zero():
        trainer.save_model(str(output_dir))
        write_json_atomic(output_dir / METRICS_FILE, metrics)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return str(output_dir), metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compressor.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="pretrained encoder: HF dir, hub id, or pkg:MODULE/PATH")
    p.add_argument("--task", required=True, help=f"{', '.join(GLUE_TASKS)} or custom")
    p.add_argument("--glue-dir", help="local GLUE folder (standard TSVs); omit to read the hub")
    p.add_argument("--train-file")
    p.add_argument("--validation-file")
    p.add_argument("--text-columns", nargs="+")
    p.add_argument("--label-column", default="label")
    p.add_argument("--num-labels", type=int, help="custom data: classes (1 = regression)")
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seed", type=int, default=42)
    defaults = FinetuneConfig()
    for name in ("epochs", "max_steps", "learning_rate", "batch_size", "max_seq_length", "warmup_ratio", "weight_decay"):
        p.add_argument("--" + name.replace("_", "-"), type=type(getattr(defaults, name)), default=getattr(defaults, name))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    task_cfg = TaskConfig(name=a.task, glue_dir=a.glue_dir, train_file=a.train_file, validation_file=a.validation_file,
                          text_columns=a.text_columns, label_column=a.label_column, num_labels=a.num_labels,
                          max_train_samples=a.max_train_samples, max_eval_samples=a.max_eval_samples)
    ft = FinetuneConfig(epochs=a.epochs, max_steps=a.max_steps, learning_rate=a.learning_rate, batch_size=a.batch_size,
                        max_seq_length=a.max_seq_length, warmup_ratio=a.warmup_ratio, weight_decay=a.weight_decay)
    try:
        path, metrics = finetune_teacher(a.model, task_cfg, ft, a.output_dir, seed=a.seed)
    except (ConfigError, DataError, StaleError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"teacher: {path}  dev: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
