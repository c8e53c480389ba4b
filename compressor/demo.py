"""``make demo``: the demo recipe on the data folder beside the checkout, or on the hub where it is absent, ending
with the student exported and in BentoML's model store, served by ``bentoml serve bentos.service:TextClassifier``.

``configs/demo.yaml`` reads GLUE SST-2 and the general corpus from ``../shared/data``. Where those paths do
not exist (anyone's own clone), the same recipe runs with its data read from the Hugging Face hub instead:
SST-2 from ``nyu-mll/glue`` and a general corpus streamed from WikiText-103 (``Salesforce/wikitext``), cut
to :data:`HUB_BLOCKS` blocks. Offline and without the folder, one line says what to put where.

The end is ``compressor.distill --bento`` without the Bento build (that needs a package index): ``export/``
per the recipe's ``export:`` section, stored as ``ernie-tiny-classifier`` (a rerun stores nothing new).

    python -m compressor.demo --output-dir runs/demo [--stages.tsd.epochs 2 ...]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import transformers
import yaml

from compressor.data import HubUnreachable
from compressor.deploy.deliver import DEFAULT_NAME, Delivery
from compressor.distill import print_report, run
from compressor.recipe.schema import load_recipe, parse_overrides
from ernie_common.errors import cli

DEMO_RECIPE = Path(__file__).resolve().parent / "configs" / "demo.yaml"
HUB_BLOCKS = 40000
"""WikiText-103 blocks streamed for GD/GED: about the size of the local demo corpus (76k blocks of 64)."""
HUB_DATA = {"task.glue_dir": None, "general.files": [], "general.dataset": "Salesforce/wikitext",
            "general.dataset_config": "wikitext-103-raw-v1", "general.max_blocks": HUB_BLOCKS}


def missing_local_data(recipe: dict[str, Any]) -> list[str]:
    """The recipe's local data paths (GLUE folder, corpus files) that do not exist."""
    glue = (recipe.get("task") or {}).get("glue_dir")
    files = (recipe.get("general") or {}).get("files") or []
    return [str(p) for p in [glue, *files] if p is not None and not Path(p).exists()]


def data_overrides(recipe: dict[str, Any]) -> dict[str, Any]:
    """Nothing when the recipe's local data is there; else the overrides that read the demo data from the hub."""
    return dict(HUB_DATA) if missing_local_data(recipe) else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compressor.demo", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEMO_RECIPE), help="the demo recipe (default: configs/demo.yaml)")
    p.add_argument("--output-dir", required=True)
    args, overrides = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_warning()
    raw = yaml.safe_load(Path(args.config).read_text()) or {}
    missing = missing_local_data(raw)
    hub = data_overrides(raw)
    if hub:
        print(f"demo: {', '.join(missing)} not found; reading SST-2 from nyu-mll/glue and a general corpus from "
              f"{hub['general.dataset']} ({hub['general.dataset_config']}) on the Hugging Face hub", file=sys.stderr)
    try:
        recipe = load_recipe(args.config, {**hub, **parse_overrides(overrides)})
        report = run(recipe, args.output_dir, delivery=Delivery(bento=DEFAULT_NAME, build=False))
    except HubUnreachable as exc:
        if not hub:
            raise
        glue = (raw.get("task") or {}).get("glue_dir")
        files = (raw.get("general") or {}).get("files") or []
        where = ([f"GLUE's SST-2/ folder (train.tsv, dev.tsv) in {Path(glue).resolve()}"] if glue else []) + \
                [f"a plain-text corpus at {Path(f).resolve()}" for f in files]
        print(f"error: the demo's data is not here and the hub is unreachable ({str(exc).split(' from ')[0]}): "
              f"put {' and '.join(where)}, or go online", file=sys.stderr)
        return 2
    return print_report(args.output_dir, report)


main = cli(main)

if __name__ == "__main__":
    sys.exit(main())
