"""Fine-tune a pretrained encoder into the task's teacher (``python -m compressor.finetune`` runs it on its own).

The output directory is a standard HF sequence-classification model (with ``id2label``) plus
``dev_metrics.json``; that file is written last, so its presence means "finished" and a rerun returns the
finished teacher instead of training again. An interrupted run resumes from its last Trainer checkpoint.
Both only when the teacher's inputs (pretrained model, task data, settings, seed) are the ones recorded in
its ``fingerprint.json``; otherwise one line says what changed (see ``compressor/run/runstate.py``).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer
from transformers.trainer_utils import get_last_checkpoint

from compressor.data.task_data import load_task_data, task_spec, tokenize_task
from compressor.modeling.metrics import trainer_metrics
from compressor.modeling.trainer import training_arguments
from compressor.recipe.schema import Recipe, resolve_model_path
from compressor.recipe.tasks import label_maps
from compressor.run.runstate import CHECKPOINTS, Status, teacher_result
from ernie_common.io import read_json, write_json_atomic

log = logging.getLogger(__name__)
METRICS_FILE = "dev_metrics.json"
METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")


def finetune_teacher(recipe: Recipe, output_dir: str | Path, report_to: list[str] | None = None,
                     fix: str = "") -> tuple[str, dict[str, float]]:
    """Fine-tune ``recipe.teacher.pretrained`` on ``recipe.task`` with ``recipe.teacher.finetune``'s schedule;
    returns (output_dir, dev metrics). Reuses a finished run and resumes an interrupted one when their inputs
    are unchanged; raises :class:`StaleError` when they changed."""
    output_dir = Path(output_dir)
    ft, seed = recipe.teacher.finetune, recipe.seed
    pretrained = resolve_model_path(recipe.teacher.pretrained)
    result = teacher_result(pretrained, recipe.task, ft, seed, output_dir, fix)
    if result.status() is Status.FINISHED:
        log.info("fine-tuned teacher already in %s", output_dir)
        return str(output_dir), read_json(output_dir / METRICS_FILE)
    task = task_spec(recipe.task)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    data = tokenize_task(load_task_data(recipe.task), tokenizer, ft.max_seq_length)
    train = data["train"]
    if ft.sample_rows is not None and ft.sample_rows < len(train):
        train = train.shuffle(seed=seed).select(range(ft.sample_rows))
    # a pretrained dir may already carry a head for other labels: it is replaced by the task's, initialised
    # from the seed (the Trainer seeds only after the model exists), so a rerun makes the same teacher
    transformers.set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(pretrained, ignore_mismatched_sizes=True,
                                                               **label_maps(task))
    ckpt_dir = output_dir / CHECKPOINTS
    overrides = {"report_to": report_to} if report_to is not None else {}
    # the Trainer drops the columns the model's forward does not take (MPNet has no token_type_ids)
    args = training_arguments(ckpt_dir, ft, recipe, logging_dir=output_dir / "logs", remove_unused_columns=True,
                              per_device_eval_batch_size=max(64, ft.batch_size), **overrides)
    if args.process_index == 0:  # before any checkpoint: a killed fine-tuning is checked against it
        result.record()
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=data["validation"],
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=trainer_metrics(task))
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    metrics = {k.removeprefix("eval_"): float(v) for k, v in trainer.evaluate().items()
               if k.removeprefix("eval_") in METRICS}
    if trainer.is_world_process_zero():
        trainer.save_model(str(output_dir))
        write_json_atomic(output_dir / METRICS_FILE, metrics)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return str(output_dir), metrics
