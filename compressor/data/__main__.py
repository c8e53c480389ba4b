"""``python -m compressor.data --config RECIPE [overrides]``: pack the recipe's general corpus for each general
stage's block size ahead of a ``torchrun`` job, whose other ranks would otherwise wait for the build at a
barrier (30 minutes at most by default): a Wikipedia-scale first build is worth running on its own."""
from __future__ import annotations

import argparse
import logging
import sys

from compressor.data.corpus import general_corpus, packed_path
from compressor.recipe.schema import load_recipe
from ernie_common.errors import cli


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(prog="python -m compressor.data",
                                description="Pack a recipe's general corpus once, ahead of training.")
    p.add_argument("--config", required=True, action="append", help="recipe, then overlays (as compressor.distill)")
    args, overrides = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = load_recipe(args.config, overrides)
    tokenizer = AutoTokenizer.from_pretrained(recipe.teacher.finetuned or recipe.teacher.pretrained)
    for size in sorted({s.max_seq_length for s in recipe.stages if s.data == "general"}):
        blocks = general_corpus(recipe.general, tokenizer, size)
        print(f"{len(blocks)} blocks of {size} tokens: {packed_path(recipe.general, tokenizer, size)}")
    return 0


main = cli(main)

if __name__ == "__main__":
    sys.exit(main())
