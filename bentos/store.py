"""Put a model into BentoML's model store, where the service and ``bentoml build`` find it.

    python -m bentos.store exports/sst2 [--name ernie-tiny-classifier]

takes an HF classification directory or a ``runtime.export`` directory (checked as ``runtime.Classifier``
would load it), copies it into a new version of the named model (``bentoml models list``) and prints its
tag. ``bentoml serve bentos.service:TextClassifier`` then serves ``NAME:latest`` (``--arg model=NAME:VERSION``
for another), and ``bentoml build`` packs it into the Bento. BentoML writes the version in a temporary
folder and moves it into the store when complete.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from ernie_common.errors import cli

DEFAULT_NAME = "ernie-tiny-classifier"


def store_model(model_dir: str | Path, name: str = DEFAULT_NAME) -> str:
    """The tag (``name:version``) of a new store version holding ``model_dir``."""
    import bentoml

    from runtime.classifier import MANIFEST, check_tokenizer, input_kind, is_pair_task, labels_of, read_model_config

    root = Path(model_dir)
    config = read_model_config(root)
    check_tokenizer(root)
    is_pair = is_pair_task(config)
    kind = input_kind(config) or {True: "pair", False: "single", None: "unknown"}[is_pair]
    exported = (root / MANIFEST).is_file()
    metadata = {"labels": labels_of(config), "input_kind": kind, "source": str(root.resolve())}
    if exported:
        manifest = json.loads((root / MANIFEST).read_text())
        metadata.update(variants=sorted(manifest.get("variants", {})), source_sha256=manifest["source"]["sha256"])
    with bentoml.models.create(name, labels={"format": "runtime.export" if exported else "huggingface",
                                             "input_kind": kind}, metadata=metadata) as model:
        shutil.copytree(root, model.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.tmp", ".*"))
    return str(model.tag)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="an HF classification directory or a runtime.export directory")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"model name in the store (default {DEFAULT_NAME})")
    args = parser.parse_args(argv)
    print(store_model(args.model_dir, args.name))
    return 0


def _bentoml_errors() -> tuple[type[BaseException], ...]:
    from bentoml.exceptions import BentoMLException

    return (BentoMLException,)


main = cli(main, errors=_bentoml_errors())


if __name__ == "__main__":
    sys.exit(main())
