"""Fixtures for the HTTP tests: a real `bentoml serve` on a free loopback port, stopped by its PID."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# one worker with one thread starts fastest; on shared cores more threads only wait for each other
SERVER_ENV = {"COMPRESSOR_WORKERS": "1", "COMPRESSOR_THREADS": "1"}


@pytest.fixture(scope="session")
def serve_load():
    """benchmarks/serve_load.py as a module: it owns the server launcher and the bounded load client."""
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sst2_sentences(glue_dir) -> list[str]:
    with open(glue_dir / "SST-2" / "dev.tsv", newline="", encoding="utf-8") as fh:
        return [row["sentence"] for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]


@pytest.fixture(scope="session")
def tiny_dir(tiny_bert_dir, sst2_sentences, tmp_path_factory) -> Path:
    """The tiny random BERT with its head scaled and centred so its labels split about evenly on SST-2:
    with the stock tiny model every answer is "negative", and answers mixed up between requests would pass."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    calibration = tokenizer(sst2_sentences[600:800], padding=True, return_tensors="pt")
    with torch.no_grad():
        model.classifier.weight.mul_(1000)
        logits = model(**calibration).logits
        margin = (logits[:, 1] - logits[:, 0]).median()
        model.classifier.bias.copy_(model.classifier.bias - torch.stack([torch.zeros(()), margin]))
    out = tmp_path_factory.mktemp("tiny_varied")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def server_env() -> dict[str, str]:
    return dict(SERVER_ENV)


@pytest.fixture(scope="session")
def tiny_server(serve_load, tiny_dir, tmp_path_factory):
    """The service on the tiny random BERT (input kind unknown: texts and pairs both accepted), two workers
    as on a 2-core machine, small per-request limit so 'too many items' is cheap to send."""
    with serve_load.bento_server(tiny_dir, env={**SERVER_ENV, "COMPRESSOR_WORKERS": "2", "COMPRESSOR_MAX_ITEMS": "16"},
                                 log_dir=tmp_path_factory.mktemp("serve_tiny")) as server:
        yield server
