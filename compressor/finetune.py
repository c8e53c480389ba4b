"""Fine-tune a pretrained encoder into a task teacher: ``python -m compressor.finetune``.

The same fine-tuning a recipe with ``teacher.finetuned: null`` runs first (``compressor/run/finetune.py``),
reused or resumed by its fingerprint.
"""
from __future__ import annotations

import argparse
import logging
import sys

from compressor.recipe.schema import FinetuneConfig, Recipe, TaskConfig, TeacherConfig
from compressor.recipe.tasks import GLUE_TASKS
from compressor.run.finetune import finetune_teacher
from ernie_common.errors import cli

SCHEDULE = ("epochs", "max_steps", "learning_rate", "batch_size", "max_seq_length", "warmup_ratio", "weight_decay")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compressor.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="pretrained encoder: HF dir, hub id, or pkg:MODULE/PATH")
    p.add_argument("--task", required=True, help=f"{', '.join(GLUE_TASKS)} or custom")
    p.add_argument("--glue-dir", help="local GLUE folder (standard TSVs); omit to read the hub")
    p.add_argument("--train-file")
    p.add_argument("--validation-file")
    p.add_argument("--text-columns", nargs="+")
    p.add_argument("--label-column", default="label")
    p.add_argument("--num-labels", type=int, help="custom data: classes (1 = regression)")
    p.add_argument("--max-train-samples", type=int, help="the task's first N training rows")
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--sample-rows", type=int, help="fine-tune on a seeded random sample of N of those rows")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seed", type=int, default=42)
    defaults = FinetuneConfig()
    for name in SCHEDULE:
        p.add_argument("--" + name.replace("_", "-"), type=type(getattr(defaults, name)), default=getattr(defaults, name))
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    task = TaskConfig(name=a.task, glue_dir=a.glue_dir, train_file=a.train_file, validation_file=a.validation_file,
                      text_columns=a.text_columns, label_column=a.label_column, num_labels=a.num_labels,
                      max_train_samples=a.max_train_samples, max_eval_samples=a.max_eval_samples)
    ft = FinetuneConfig(sample_rows=a.sample_rows, **{name: getattr(a, name) for name in SCHEDULE})
    recipe = Recipe(task=task, teacher=TeacherConfig(pretrained=a.model, finetune=ft), seed=a.seed)
    path, metrics = finetune_teacher(recipe, a.output_dir)
    print(f"teacher: {path}  dev: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


main = cli(main)

if __name__ == "__main__":
    sys.exit(main())
