"""Put a model into BentoML's model store, where the service and ``bentoml build`` find it.

    python -m bentos.store exports/sst2 [--name ernie-tiny-classifier] [--fingerprint KEY]

takes an HF classification directory or a ``runtime.export`` directory (checked as ``runtime.Classifier``
would load it), copies it into a new version of the named model (``bentoml models list``) and prints its
tag. ``bentoml serve bentos.service:TextClassifier`` then serves ``NAME:latest`` (``--arg model=NAME:VERSION``
for another), and ``bentoml build`` packs it into the Bento (:func:`build_bento`). BentoML writes the version
in a temporary folder and moves it into the store when complete.

A version stored with a ``fingerprint`` (what the folder was made from; ``compressor.distill --bento`` passes
its export's) is labelled with it, and storing the same fingerprint again returns that version instead of a
new one. A folder holding a distillation ``report.json`` (as ``compressor.distill`` writes beside its model
card) gives the version the report as metadata.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from ernie_common.errors import cli, first_line

DEFAULT_NAME = "ernie-tiny-classifier"
SERVICE = "bentos.service:TextClassifier"
REPORT_FILE = "report.json"
REPO = Path(__file__).resolve().parents[1]
BENTOFILE = REPO / "bentos" / "bentofile.yaml"
BUILT = re.compile(r'Bento\(tag="([^"]+)"\)')


def stored_with(name: str, fingerprint: str) -> str | None:
    """The tag of the newest version of ``name`` labelled with ``fingerprint``, if there is one."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        versions = [m for m in bentoml.models.list(name) if m.info.labels.get("fingerprint") == fingerprint]
    except NotFound:
        return None
    return str(max(versions, key=lambda m: m.info.creation_time).tag) if versions else None


def without_nulls(value: Any) -> Any:
    """``value`` with every ``None`` left out: BentoML's metadata takes basic types only."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value if v is not None]
    return value


def store_model(model_dir: str | Path, name: str = DEFAULT_NAME, fingerprint: str | None = None) -> str:
    """The tag (``name:version``) of a new store version holding ``model_dir``; with a ``fingerprint``, that of
    the version already stored under it where there is one (nothing is copied)."""
    import bentoml

    from runtime.classifier import MANIFEST, check_tokenizer, input_kind, is_pair_task, labels_of, read_model_config

    root = Path(model_dir)
    config = read_model_config(root)
    check_tokenizer(root)
    if fingerprint and (tag := stored_with(name, fingerprint)):
        return tag
    is_pair = is_pair_task(config)
    kind = input_kind(config) or {True: "pair", False: "single", None: "unknown"}[is_pair]
    exported = (root / MANIFEST).is_file()
    metadata = {"labels": labels_of(config), "input_kind": kind, "source": str(root.resolve())}
    if exported:
        manifest = json.loads((root / MANIFEST).read_text())
        metadata.update(variants=sorted(manifest.get("variants", {})), source_sha256=manifest["source"]["sha256"])
    if (root / REPORT_FILE).is_file():
        metadata["report"] = without_nulls(json.loads((root / REPORT_FILE).read_text()))
    labels = {"format": "runtime.export" if exported else "huggingface", "input_kind": kind,
              **({"fingerprint": fingerprint} if fingerprint else {})}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        shutil.copytree(root, model.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.tmp", ".*"))
    return str(model.tag)


def serve_command(tag: str, bentoml_cli: str = "bentoml") -> str:
    """The command that serves the stored model ``tag``: the service's default (``DEFAULT_NAME:latest``) needs
    no argument; another name, or an older version, is named with ``--arg model=TAG``."""
    import bentoml

    latest = str(bentoml.models.get(f"{DEFAULT_NAME}:latest").tag) if tag.startswith(f"{DEFAULT_NAME}:") else None
    return f"{bentoml_cli} serve {SERVICE}" + ("" if tag == latest else f" --arg model={tag}")


def build_bento(tag: str, timeout_s: float = 900) -> tuple[str | None, str]:
    """``bentoml build -f bentos/bentofile.yaml`` with the stored model ``tag``: (the Bento's tag, or None, and
    one line saying what happened). Locking the image's Python packages needs a package index: where none is
    reachable the line says so and how to build later; the stored model is not affected."""
    env = {k: v for k, v in os.environ.items() if k != "COMPRESSOR_MODEL_DIR"}  # set, the Bento would carry no model
    later = f"`bentoml build -f bentos/bentofile.yaml . --arg model={tag}` where a package index is reachable"
    try:
        proc = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILE), str(REPO),
                               "--arg", f"model={tag}"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"Bento not built (bentoml build ran past {timeout_s:.0f} s); build it with {later}"
    built = BUILT.search(proc.stdout + proc.stderr)
    if proc.returncode == 0 and built:
        bento = built.group(1)
        return bento, f"Bento {bento} built: `bentoml serve {bento}` or `bentoml containerize {bento}`"
    errors = [line for line in (proc.stderr + proc.stdout).splitlines() if line.startswith("Error:")]
    reason = errors[-1].removeprefix("Error:").strip() if errors else first_line(Exception(proc.stderr or proc.stdout))
    return None, f"Bento not built ({reason}); {tag} is stored: build it with {later}"


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="an HF classification directory or a runtime.export directory")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"model name in the store (default {DEFAULT_NAME})")
    parser.add_argument("--fingerprint", default=None,
                        help="label the version with this key; a version already stored under it is reused")
    args = parser.parse_args(argv)
    print(store_model(args.model_dir, args.name, args.fingerprint))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command, BentoML's own errors reported as one line too. BentoML is imported here and in the functions
    above, never when this module is imported: the training side (``compressor.deploy.deliver``) imports it on
    machines without BentoML (a GPU training image)."""
    from bentoml.exceptions import BentoMLException

    return cli(_main, errors=(BentoMLException,))(argv)


if __name__ == "__main__":
    sys.exit(main())
