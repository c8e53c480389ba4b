"""Fixtures for the HTTP tests: a real `bentoml serve` on a free loopback port, stopped by its PID."""
from __future__ import annotations

from pathlib import Path

import pytest

from bentos.local import bento_server
from ernie_common.tables import read_examples

# one worker with one thread starts fastest; on shared cores more threads only wait for each other
SERVER_ENV = {"COMPRESSOR_WORKERS": "1", "COMPRESSOR_THREADS": "1"}


@pytest.fixture(scope="session")
def sst2_sentences(glue_dir) -> list[str]:
    return read_examples(glue_dir / "SST-2" / "dev.tsv", "sentence").texts


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
def tiny_server(tiny_dir, tmp_path_factory):
    """The service on the tiny random BERT (input kind unknown: texts and pairs both accepted), two workers
    as on a 2-core machine, small per-request limit so 'too many items' is cheap to send."""
    # tests here send up to 32 requests at once and expect every one answered, on any machine: the count bound
    # is raised and the latency budget off (tests/serving/test_overload.py and test_service_config.py test them)
    with bento_server(tiny_dir, env={**SERVER_ENV, "COMPRESSOR_WORKERS": "2", "COMPRESSOR_MAX_ITEMS": "16",
                                     "COMPRESSOR_MAX_IN_FLIGHT": "64", "COMPRESSOR_QUEUE_BUDGET_MS": "0"},
                                 log_dir=tmp_path_factory.mktemp("serve_tiny")) as server:
        yield server
