"""Fine-tune a pretrained encoder into a task teacher: ``python -m compressor.finetune``.

The same fine-tuning a recipe with ``teacher.finetuned: null`` runs first (``compressor/run/finetune.py``),
reused or resumed by its fingerprint. The task and schedule options are generated from the recipe's
:class:`TaskConfig` and :class:`FinetuneConfig` (defaults and help live there), ``--seed`` from :class:`Recipe`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from compressor.recipe.schema import FinetuneConfig, Recipe, TaskConfig, parse
from compressor.recipe.tasks import GLUE_TASKS
from compressor.run.finetune import finetune_teacher
from ernie_common.errors import cli
from ernie_common.options import add_options, picked


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, list[str]]]:
    """The parser, and the options it took from each recipe section (by section)."""
    p = argparse.ArgumentParser(prog="python -m compressor.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="pretrained encoder: HF dir, hub id, or pkg:MODULE/PATH")
    p.add_argument("--task", required=True, help=f"{', '.join(GLUE_TASKS)} or custom")
    p.add_argument("--output-dir", required=True)
    sections = {"task": add_options(p.add_argument_group("task data"), TaskConfig, skip=("name",)),
                "finetune": add_options(p.add_argument_group("schedule"), FinetuneConfig),
                "recipe": add_options(p, Recipe, names=("seed",))}
    return p, sections


def main(argv: list[str] | None = None) -> int:
    parser, sections = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = parse(Recipe, {"task": {"name": a.task, **picked(a, sections["task"])},
                            "teacher": {"pretrained": a.model, "finetune": picked(a, sections["finetune"])},
                            **picked(a, sections["recipe"])})
    path, metrics = finetune_teacher(recipe, a.output_dir)
    print(f"teacher: {path}  dev: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


main = cli(main)

if __name__ == "__main__":
    sys.exit(main())
