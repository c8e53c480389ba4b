"""The BentoML service over real HTTP: answers match runtime.Classifier, bad input is 4xx, batching happens."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bentos.local import REPO, ServerError, batch_histogram, bento_server
from runtime import Classifier

LONG_TEXT = " ".join(["a wonderfully long and winding review of a film"] * 80)  # ~800 tokens > 512


@pytest.fixture(scope="module")
def tiny_classifier(tiny_dir) -> Classifier:
    return Classifier.load(tiny_dir, backend="torch")


def post(server, path: str, body) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json"},
                      timeout=60)


def test_labels_and_truncation_match_classifier(tiny_server, tiny_classifier, sst2_sentences):
    import bentoml

    texts = sst2_sentences[:12] + [LONG_TEXT]
    expected = tiny_classifier(texts)
    assert len({e["label"] for e in expected}) == 2
    with bentoml.SyncHTTPClient(tiny_server.url, timeout=60) as client:
        answers = client.classify(texts=texts)
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    assert [a["score"] for a in answers] == pytest.approx([e["score"] for e in expected], abs=1e-4)
    assert [a["truncated"] for a in answers] == [False] * 12 + [True]


def test_pairs_match_classifier(tiny_server, tiny_classifier, sst2_sentences):
    pairs = [[a, b] for a, b in zip(sst2_sentences[20:26], sst2_sentences[30:36])]
    response = post(tiny_server, "/classify", {"pairs": pairs})
    assert response.status_code == 200, response.text
    expected = tiny_classifier([tuple(p) for p in pairs])
    assert [a["label"] for a in response.json()] == [e["label"] for e in expected]
    assert [a["score"] for a in response.json()] == pytest.approx([e["score"] for e in expected], abs=1e-4)


BAD_BODIES = {
    "malformed JSON": b'{"texts": ["unterminated',
    "not an object": b'["a film"]',
    "empty object": b"{}",
    "empty list": b'{"texts": []}',
    "empty string": b'{"texts": ["a film", ""]}',
    "whitespace string": b'{"texts": ["   \\n"]}',
    "number item": b'{"texts": ["a film", 3]}',
    "null item": b'{"texts": [null]}',
    "string instead of list": b'{"texts": "a film"}',
    "pair of one": b'{"pairs": [["only one"]]}',
    "pair of three": b'{"pairs": [["a", "b", "c"]]}',
    "pair with a number": b'{"pairs": [["a", 1]]}',
    "texts and pairs": b'{"texts": ["a"], "pairs": [["a", "b"]]}',
    "null texts": b'{"texts": null}',
    "empty body": b"",
    "unknown key": b'{"text": ["a film"]}',
    "too many items": json.dumps({"texts": ["a film"] * 17}).encode(),
    "not UTF-8": b'{"texts": ["\xff\xfe"]}',
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_input_is_a_clear_4xx(tiny_server, name):
    response = post(tiny_server, "/classify", BAD_BODIES[name])
    assert response.status_code == 400, (name, response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]


@pytest.mark.parametrize("content_type", ["multipart/form-data", "application/x-www-form-urlencoded", "text/plain"])
def test_unparsable_bodies_of_other_types_are_4xx(tiny_server, content_type):
    for path in ("/classify", "/model_info"):
        response = httpx.post(f"{tiny_server.url}{path}", content=b"garbage=1&x", timeout=60,
                              headers={"Content-Type": content_type})
        assert response.status_code == 400 and "not valid JSON" in response.json()["error"], response.text


def test_bentoml_own_errors_keep_the_error_shape(tiny_server):
    """Errors BentoML raises itself (a pickle body, a wrong method) come back as {"error": one line} too."""
    pickled = httpx.post(f"{tiny_server.url}/classify", content=b"x", timeout=60,
                         headers={"Content-Type": "application/vnd.bentoml+pickle"})
    assert pickled.status_code == 415 and set(pickled.json()) == {"error"}
    wrong_method = httpx.get(f"{tiny_server.url}/classify", timeout=60)
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "Method Not Allowed"}


def test_model_info_says_what_runs(tiny_server, tiny_classifier):
    info = post(tiny_server, "/model_info", {}).json()
    assert info["labels"] == ["negative", "positive"]
    assert info["backend"] == "torch" and info["providers"] == ["torch:cpu"]
    assert info["model_hash"] == tiny_classifier.model_hash
    assert info["max_length"] == tiny_classifier.max_length
    assert info["batching"]["max_items_per_request"] == 16 and info["batching"]["max_chars_per_text"] == 10_000
    assert info["is_pair"] is None and info["workers"] == 2 and info["threads_per_worker"] == 1
    assert info["report"] is None  # a folder without the report.json compressor.distill writes beside its card


def test_health_metrics_and_openapi(tiny_server):
    for path in ("/healthz", "/readyz", "/livez"):
        assert httpx.get(f"{tiny_server.url}{path}", timeout=10).status_code == 200
    metrics = httpx.get(f"{tiny_server.url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "bentoml_service_request_total" in metrics.text
    openapi = httpx.get(f"{tiny_server.url}/docs.json", timeout=10).json()
    assert {"/classify", "/model_info"} <= set(openapi["paths"]) and "/predict" not in openapi["paths"]
    responses = openapi["paths"]["/classify"]["post"]["responses"]
    assert {"200", "400", "413", "422", "503"} <= set(responses)
    request = openapi["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(request["properties"]) == {"texts", "pairs"} and len(request["oneOf"]) == 2  # unknown kind


def test_200_concurrent_requests_all_succeed_and_batch(tiny_server, tiny_classifier, sst2_sentences):
    """32 clients at once: every answer is the in-process Classifier's for its own request (none mixed up
    between the requests of one batch), and BentoML batched them (more than one request per model call)."""
    payloads = [{"texts": [sst2_sentences[i], sst2_sentences[i + 200]]} for i in range(200)]
    before = batch_histogram(tiny_server.url)
    with httpx.Client(timeout=60, trust_env=False) as client, ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda body: client.post(f"{tiny_server.url}/classify", json=body), payloads))
    after = batch_histogram(tiny_server.url)
    assert [r.status_code for r in responses] == [200] * len(payloads)
    expected = tiny_classifier([t for p in payloads for t in p["texts"]])
    assert len({e["label"] for e in expected}) == 2, "labels must vary, or mixed-up answers would pass"
    got = [a for r in responses for a in r.json()]
    assert [a["label"] for a in got] == [e["label"] for e in expected]
    assert [a["score"] for a in got] == pytest.approx([e["score"] for e in expected], abs=1e-4)
    calls = after[1] - before[1]
    assert calls > 0 and (after[0] - before[0]) / calls > 1


@pytest.mark.slow
def test_real_minilm_classifier_served(server_env, minilm_dir, sst2_sentences, tmp_path):
    """The real pretrained encoder (head seeded, untrained): served answers match the in-process Classifier,
    and a single-sentence model refuses pairs with a 422 naming the fix."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
        finetuning_task="sst2")
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path / "model")
    texts = sst2_sentences[100:132]
    expected = Classifier.load(tmp_path / "model", backend="torch")(texts)
    with bento_server(tmp_path / "model", env=server_env, log_dir=tmp_path) as server:
        answers = post(server, "/classify", {"texts": texts}).json()
        refused = post(server, "/classify", {"pairs": [["a film", "a movie"]]})
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    assert [a["score"] for a in answers] == pytest.approx([e["score"] for e in expected], abs=1e-4)
    assert refused.status_code == 422 and '"texts"' in refused.json()["error"]


def test_server_on_a_bad_model_dir_fails_fast_with_the_fix(server_env, tmp_path):
    with pytest.raises(ServerError, match="ModelDirError: .*has no config.json"):
        with bento_server(tmp_path, env=server_env, ready_timeout_s=90, log_dir=tmp_path):
            pass


def test_export_directory_served_on_onnxruntime(server_env, tiny_dir, tiny_classifier,
                                                 sst2_sentences, tmp_path):
    """A `runtime.export` directory serves through ONNX Runtime, and /model_info says so."""
    from runtime.export import ExportOptions, export

    export(tiny_dir, tmp_path / "export", ExportOptions(optimize=None, parity_limit=16), log=lambda *a: None)
    texts = sst2_sentences[40:56]
    with bento_server(tmp_path / "export", env=server_env, log_dir=tmp_path) as server:
        answers = post(server, "/classify", {"texts": texts}).json()
        info = post(server, "/model_info", {}).json()
    assert info["backend"] == "onnxruntime" and "CPUExecutionProvider" in info["providers"]
    assert info["threads"] == {"intra_op": 1, "inter_op": 1, "spinning": False}  # what the session was given
    assert info["model_hash"] == tiny_classifier.model_hash
    assert [a["label"] for a in answers] == [e["label"] for e in tiny_classifier(texts)]


def test_model_from_the_store_is_served(server_env, tiny_dir, tiny_classifier, tmp_path):
    """`python -m bentos.store` puts a model into BentoML's store (the same fingerprint twice: one version);
    without COMPRESSOR_MODEL_DIR the service serves the store's latest version (what `bentoml build` packs into a
    Bento), and /model_info returns the distillation report the folder carried."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    home = tmp_path / "bentoml_home"
    model = shutil.copytree(tiny_dir, tmp_path / "model")
    report = {"task": "sst2", "metric": "accuracy", "student": {"dev": {"accuracy": 0.75}}, "pruned": None}
    (model / "report.json").write_text(json.dumps(report))

    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}

    def store(*extra: str) -> str:
        stored = subprocess.run([sys.executable, "-m", "bentos.store", str(model), *extra], capture_output=True,
                                text=True, env=env, cwd=REPO, timeout=300)
        assert stored.returncode == 0, stored.stderr
        return stored.stdout.strip().splitlines()[-1]

    tag = store("--fingerprint", "0123abcd")
    assert tag.startswith("ernie-tiny-classifier:") and store("--fingerprint", "0123abcd") == tag
    versions = list((home / "models" / "ernie-tiny-classifier").glob("*/model.yaml"))
    assert len(versions) == 1
    stored_info = yaml.safe_load(versions[0].read_text())
    assert stored_info["labels"]["fingerprint"] == "0123abcd"
    assert stored_info["metadata"]["report"] == {k: v for k, v in report.items() if v is not None}  # no nulls there
    with bento_server(None, env=server_env, log_dir=tmp_path) as server:
        info = post(server, "/model_info", {}).json()
    assert info["model_hash"] == tiny_classifier.model_hash
    assert info["path"].startswith(str(home / "models" / "ernie-tiny-classifier"))
    assert info["report"] == report
    bad = subprocess.run([sys.executable, "-m", "bentos.store", str(tmp_path / "nope")], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
