"""Fixtures for the runtime tests: models with a real head, and export directories built once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import fit_minilm_classifier  # noqa: E402

from runtime.export import ExportOptions, export  # noqa: E402


def _quiet(*_args, **_kwargs) -> None:
    return None


@pytest.fixture(scope="session")
def sst2_dev(glue_dir) -> Path:
    return glue_dir / "SST-2" / "dev.tsv"


@pytest.fixture(scope="session")
def tiny_export(tiny_bert_dir, tmp_path_factory) -> Path:
    """Every CPU-buildable variant of the tiny random BERT."""
    out = tmp_path_factory.mktemp("tiny_export") / "export"
    export(tiny_bert_dir, out, ExportOptions(fp16=True, int8=True), log=_quiet)
    return out


@pytest.fixture(scope="session")
def minilm_clf_dir(minilm_dir, glue_dir, tmp_path_factory) -> Path:
    """The real all-MiniLM-L6-v2 with a sentiment head fitted on 256 real SST-2 training sentences."""
    return fit_minilm_classifier(minilm_dir, glue_dir / "SST-2" / "train.tsv",
                                 tmp_path_factory.mktemp("minilm_clf"), n_train=256)


@pytest.fixture(scope="session")
def minilm_export(minilm_clf_dir, sst2_dev, tmp_path_factory) -> Path:
    """The real MiniLM classifier exported (fp32, O2-fused, int8), parity on 128 real SST-2 dev sentences."""
    out = tmp_path_factory.mktemp("minilm_export") / "export"
    export(minilm_clf_dir, out, ExportOptions(int8=True, parity_data=sst2_dev, parity_limit=128,
                                              int8_min_agreement=0.9), log=_quiet)
    return out
