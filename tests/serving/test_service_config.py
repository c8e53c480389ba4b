"""Service settings, request validation and the error/OpenAPI contract, without a server."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from bentos import contract, service, settings


@pytest.mark.parametrize("raw, message", [("many", "not an integer"), ("0", "below 1")])
def test_bad_integer_names_the_variable(raw, message):
    with pytest.raises(settings.ServiceConfigError, match=f"COMPRESSOR_MAX_ITEMS.*{message}"):
        settings.env_int("COMPRESSOR_MAX_ITEMS", 64, 1, {"COMPRESSOR_MAX_ITEMS": raw})


def test_flags_and_defaults():
    assert settings.env_flag("COMPRESSOR_BATCHING", True, {}) is True
    assert settings.env_flag("COMPRESSOR_BATCHING", True, {"COMPRESSOR_BATCHING": "off"}) is False
    with pytest.raises(settings.ServiceConfigError, match="COMPRESSOR_BATCHING"):
        settings.env_flag("COMPRESSOR_BATCHING", True, {"COMPRESSOR_BATCHING": "maybe"})


def test_workers_and_threads_follow_the_machine():
    two = settings.Settings.from_env({}, cpus=2, gpu=False)
    assert (two.workers, two.threads, two.max_chars, two.batching) == (1, 2, 10_000, True)
    ten = settings.Settings.from_env({}, cpus=10, gpu=False)
    assert (ten.workers, ten.threads) == (2, 5)
    gpu = settings.Settings.from_env({}, cpus=4, gpu=True)
    assert (gpu.workers, gpu.threads) == (1, 4)
    fewer = settings.Settings.from_env({"COMPRESSOR_WORKERS": "2"}, cpus=4, gpu=False)
    assert (fewer.workers, fewer.threads) == (2, 2)
    both = settings.Settings.from_env({"COMPRESSOR_WORKERS": "auto", "COMPRESSOR_THREADS": "3"}, cpus=8, gpu=False)
    assert (both.workers, both.threads) == (2, 3)


def test_responses_name_their_media_type(monkeypatch):
    """BentoML derives a response's media type from the output's JSON schema, built anew per response, unless
    the output spec names it: the service names it, so no schema is built on the request path."""
    output = service.TextClassifier.apis["classify"].output_spec

    def no_schema_on_the_request_path(*args, **kwargs):
        raise AssertionError("a JSON schema was built to answer a request")

    monkeypatch.setattr(output, "model_json_schema", no_schema_on_the_request_path)
    assert output.mime_type() == "application/json"


def test_usable_cpus_honours_a_cgroup_quota(tmp_path):
    from ernie_common.env import usable_cpus

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cpus(tmp_path) == min(2, usable_cpus(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == usable_cpus(tmp_path / "none") >= 1


def test_gpu_only_backends_run_one_gpu_worker(tmp_path):
    no_driver = tmp_path / "no-driver"
    assert settings.on_gpu("cuda-graphs", no_driver) and settings.on_gpu("tensorrt", no_driver)
    assert not settings.on_gpu("auto", no_driver) and not settings.on_gpu("torch", no_driver)
    assert settings.Settings.from_env({"COMPRESSOR_BACKEND": "cuda-graphs"}, cpus=4).workers == 1


def test_no_model_is_a_clear_error():
    with pytest.raises(settings.ServiceConfigError, match="COMPRESSOR_MODEL_DIR.*bentos.store"):
        service.load_classifier(settings.Settings.from_env({}, cpus=1, gpu=False))


def test_task_mismatch_messages():
    assert service.task_mismatch(None, True) is None and service.task_mismatch(True, True) is None
    assert '"pairs"' in service.task_mismatch(True, False)
    assert '"texts"' in service.task_mismatch(False, True)


def rejected(body: str) -> contract.RequestRejected:
    with pytest.raises(ValidationError) as err:
        service.ClassifyRequest.model_validate_json(body)
    return service.rejection(err.value)


@pytest.mark.parametrize("body, status, words", [
    ('{"texts": ["' + "x" * 10_001 + '"]}', 422, ["texts.0", "10000", "COMPRESSOR_MAX_CHARS"]),
    ('{"texts": ["a", " "]}', 400, ["texts.1", "empty"]),
    ('{}', 400, ["exactly one"]),
    ('{"text": ["a"]}', 400, ['unknown key "text"', '"texts"']),
    ('{"texts": ["a"]', 400, ["not valid JSON"]),
    ('{"texts": ' + json.dumps(["a"] * 65) + '}', 400, ["COMPRESSOR_MAX_ITEMS"]),
])
def test_rejections_name_the_fix(body, status, words):
    err = rejected(body)
    assert err.error_code == status and "\n" not in err.message
    assert all(word in err.message for word in words), err.message


def test_schema_follows_the_models_input_kind(monkeypatch):
    monkeypatch.setattr(service.ClassifyInput, "model_is_pair", None)
    both = service.ClassifyInput.model_json_schema()
    assert set(both["properties"]) == {"texts", "pairs"} and both["additionalProperties"] is False
    assert both["properties"]["texts"]["items"] == {"type": "string", "maxLength": 10_000, "pattern": r"\S"}
    monkeypatch.setattr(service.ClassifyInput, "model_is_pair", True)
    pairs = service.ClassifyInput.model_json_schema()
    assert set(pairs["properties"]) == {"pairs"} and pairs["required"] == ["pairs"] and "oneOf" not in pairs


@pytest.mark.parametrize("body, expected", [
    (b'[{"error": "texts: too long"}]', "texts: too long"),  # BentoML 1.4's 4xx list bodies
    (b'{"error": "1 validation error for Input", "detail": [{"loc": ["x"], "msg": "Field required"}]}',
     "x: Field required"),
    (b"Method Not Allowed", "Method Not Allowed"),
    (b"", "Bad Request"),
    (b'{"error": "two\\nlines"}', "two lines"),
])
def test_error_bodies_become_one_line(body, expected):
    assert contract.error_message(body, 400) == expected


def test_openapi_lists_every_error_status():
    spec = {"paths": {"/classify": {"post": {"requestBody": {}, "responses": {
                "200": {"description": "ok"},
                "400": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvalidArgument"}}}}}}},
            "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}}},
            "components": {"schemas": {}}}
    out = contract.openapi_with_errors(spec, {"/classify": {422: "wrong kind"}}, body_required=["/classify"])
    assert out["paths"]["/classify"]["post"]["requestBody"]["required"] is True
    responses = out["paths"]["/classify"]["post"]["responses"]
    assert responses["400"]["content"]["application/json"]["schema"] == contract.ERROR_REF
    assert responses["422"]["description"] == "wrong kind" and "200" in responses
    assert out["components"]["schemas"]["Error"]["required"] == ["error"]
    assert out["paths"]["/healthz"]["get"]["responses"] == {"200": {"description": "ok"}}


def test_mixed_batches_keep_order(tiny_dir):
    from runtime import Classifier

    classifier = Classifier.load(tiny_dir, backend="torch")
    items = ["a fine film", ("a film", "a movie"), "dull", ("x", "y")]
    mixed = service.classify_mixed(classifier, items)
    assert mixed[0] == classifier(["a fine film", "dull"])[0] and mixed[2] == classifier(["a fine film", "dull"])[1]
    assert mixed[1] == classifier([("a film", "a movie"), ("x", "y")])[0]
    assert service.classify_mixed(classifier, ["dull"]) == classifier(["dull"])


def test_access_log_setting_reaches_bentoml():
    assert settings.Settings.from_env({}, cpus=2, gpu=False).access_log is True
    assert settings.Settings.from_env({"COMPRESSOR_ACCESS_LOG": "0"}, cpus=2, gpu=False).access_log is False
    with pytest.raises(settings.ServiceConfigError, match="COMPRESSOR_ACCESS_LOG"):
        settings.Settings.from_env({"COMPRESSOR_ACCESS_LOG": "sometimes"}, cpus=2, gpu=False)
    assert service.TextClassifier.config["logging"]["access"]["enabled"] is service.SETTINGS.access_log
