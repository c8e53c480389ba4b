"""ERNIE-Tiny progressive distillation: ``python -m compressor.distill --config RECIPE.yaml --output-dir DIR``.

A recipe's stages run in order; each is (teacher, data, losses with weights, schedule) and starts from
the previous stage's student. :func:`run` is the whole workflow, one step per line; each concern lives in
its own module:

* compressor/run/preflight.py: checks from configs alone, before any work;
* compressor/run/runstate.py + fingerprint.py: the run folder's results, what each depends on, and whether it is
  reused, resumed or refused (one line naming what changed);
* compressor/run/context.py: what the steps share, loaded once (tokenizer, data, teachers, dev evaluation);
* compressor/run/finetune.py, stages.py: the steps that train (the teacher; the pruned start and each stage);
* compressor/run/publish.py: ``final/``, the report and ``final/``'s model card (compressor/run/card.py);
* compressor/deploy/: with ``--export``, ``--bento [NAME]`` or ``--push-to-hub REPO``, the student taken further:
  ``export/`` (ONNX variants through parity on the task's dev rows, with their own card), BentoML's model store
  and a Bento, the Hugging Face Hub.

The run directory holds ``teacher/`` (when fine-tuned here), ``pruned/`` (``student.init: pruned``), one folder
per stage (student HF dir, ``projections.pt``, ``dev_metrics.json``, TensorBoard ``logs/``, ``fingerprint.json``
and ``stage.json`` written last: its presence means "finished"), ``final/`` (the last stage's student, with its
model card ``README.md``), the report and, with ``--export``, ``export/``. Rerunning the same command resumes:
finished results are reused (the export and the stored model too), an interrupted stage continues from its last
Trainer checkpoint, and a result whose inputs changed is refused before any work starts.
Under ``torchrun`` every rank runs this file unchanged; only rank 0 writes.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import transformers
from transformers import TrainerCallback

from compressor.deploy.deliver import DEFAULT_NAME, Delivery, deliver, delivery_lines
from compressor.modeling.trainer import process_state
from compressor.recipe.schema import Recipe, load_recipe, recipe_schema
from compressor.run.context import RunContext
from compressor.run.preflight import preflight
from compressor.run.publish import publish_final, publish_report, teacher_dev
from compressor.run.runstate import STAGE_MARKER, Status, plan_run
from compressor.run.stages import make_pruned_start, run_stage
from ernie_common.errors import cli
from ernie_common.io import read_json

log = logging.getLogger(__name__)


def run(recipe: Recipe, output_dir: str | Path, callbacks: list[TrainerCallback] | None = None,
        delivery: Delivery | None = None) -> dict[str, Any]:
    """All steps of the recipe in ``output_dir`` (reusing or resuming what an earlier run left there), ``final/``
    and the report, then what ``delivery`` asks; returns the report (with ``delivery``: and, under the key
    ``delivery``, what went where)."""
    preflight(recipe)
    if delivery:
        delivery.check()
    plan = plan_run(recipe, output_dir)
    status = plan.check()  # every folder, before any work: a stale one is refused here
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(recipe, out, list(callbacks or []))
    ctx.train_teacher()
    teacher_dev(ctx)
    pruned = None
    if plan.pruned is not None:
        pruned = plan.pruned.folder
        if status[plan.pruned.what] is not Status.FINISHED:
            make_pruned_start(ctx, plan.pruned)
    stages = []
    for index, result in enumerate(plan.stages):
        if status[result.what] is Status.FINISHED:
            log.info("%s already finished in %s: reused", result.what, result.folder)
            stages.append(read_json(result.folder / STAGE_MARKER))
        else:
            stages.append(run_stage(ctx, index, result, status[result.what], pruned))
    final = publish_final(ctx, plan.stages[-1].folder)
    report = publish_report(ctx, stages, final, pruned)
    return {**report, "delivery": deliver(ctx, report, delivery)} if delivery else report


# --------------------------------------------------------------------------- CLI


def print_report(output_dir: str | Path, report: dict[str, Any] | None = None) -> int:
    """How the CLIs end after a run: the report, and where the student went, printed by the main process."""
    if process_state().is_main_process:
        print((Path(output_dir) / "report.md").read_text())
        for line in delivery_lines((report or {}).get("delivery") or {}):
            print(line)
    return 0


def delivery_of(args: argparse.Namespace) -> Delivery | None:
    """The ``Delivery`` the arguments ask for; ``None`` when none of them is given."""
    delivery = Delivery(export=args.export, bento=args.bento, push_to_hub=args.push_to_hub)
    return delivery if delivery.exports or delivery.push_to_hub else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compressor.distill", description=__doc__.splitlines()[0],
                                epilog="Any recipe key can be overridden: --stages.tsd.epochs 3 --task.max_train_samples 2000")
    p.add_argument("--config", action="append",
                   help="YAML recipe (see compressor/configs/); repeat to lay overlays over it, in order "
                        "(e.g. --config configs/sst2.yaml --config configs/scales/demo.yaml)")
    p.add_argument("--output-dir", help="run directory; rerun the same command to resume")
    p.add_argument("--print-schema", action="store_true",
                   help="print the recipe's JSON schema (for editors that check YAML as it is typed) and exit")
    p.add_argument("--export", action="store_true",
                   help="also export final/ into OUTPUT_DIR/export/ (ONNX, the recipe's export: settings; parity on "
                        "the task's dev rows)")
    p.add_argument("--bento", nargs="?", const=DEFAULT_NAME, default=None, metavar="NAME",
                   help=f"export, store the export in BentoML's model store as NAME (default {DEFAULT_NAME}) and "
                        "build a Bento (`bentoml build`: needs a package index)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="push final/ with its model card to this Hugging Face Hub repository (checked first)")
    args, overrides = p.parse_known_args(argv)
    if args.print_schema:
        print(json.dumps(recipe_schema(), indent=2))
        return 0
    if not args.config or not args.output_dir:
        p.error("--config and --output-dir are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_warning()
    report = run(load_recipe(args.config, overrides), args.output_dir, delivery=delivery_of(args))
    return print_report(args.output_dir, report)


main = cli(main)

if __name__ == "__main__":
    sys.exit(main())
