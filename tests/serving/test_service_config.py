"""Service settings, request validation and the error/OpenAPI contract, without a server."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from bentos import contract, service, settings
from runtime.encoding import BLANK_CHARS, NOT_BLANK_PATTERN, is_blank


@pytest.mark.parametrize("env, message", [
    ({"COMPRESSOR_MAX_ITEMS": "many"}, "COMPRESSOR_MAX_ITEMS='many' is not an integer: set it to a whole number >= 1"),
    ({"COMPRESSOR_MAX_ITEMS": "0"}, "COMPRESSOR_MAX_ITEMS='0' is below 1"),
    ({"COMPRESSOR_BATCHING": "maybe"}, "COMPRESSOR_BATCHING='maybe' is not a flag: set it to 1 or 0"),
    ({"COMPRESSOR_BACKEND": "tpu"}, "COMPRESSOR_BACKEND='tpu' is not one of 'auto', 'torch'"),
    ({"COMPRESSOR_DRAIN_S": "soon"}, "COMPRESSOR_DRAIN_S='soon' is not a number"),
    ({"COMPRESSOR_MAX_IN_FLIGHT": "-1"}, "COMPRESSOR_MAX_IN_FLIGHT='-1' is below 0"),
])
def test_a_bad_variable_is_one_line_naming_it(env, message):
    with pytest.raises(settings.ServiceConfigError) as err:
        settings.Settings.from_env(env, cpus=2, gpu=False)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_flags_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("COMPRESSOR_BATCHING", "off")
    monkeypatch.setenv("COMPRESSOR_MAX_ITEMS", "7")
    monkeypatch.setenv("COMPRESSOR_VARIANT", "")  # empty is unset
    read = settings.Settings.from_env(cpus=2, gpu=False)
    assert (read.batching, read.max_items, read.variant) == (False, 7, None)


def test_the_queue_bound_follows_the_threads_and_can_be_set_or_turned_off():
    assert settings.Settings.from_env({}, cpus=2, gpu=False).max_in_flight == 2 * settings.IN_FLIGHT_PER_THREAD
    assert settings.Settings.from_env({}, cpus=8, gpu=False).max_in_flight == 4 * settings.IN_FLIGHT_PER_THREAD
    assert settings.Settings.from_env({"COMPRESSOR_MAX_IN_FLIGHT": "3"}, cpus=8, gpu=False).max_in_flight == 3
    assert settings.Settings.from_env({"COMPRESSOR_MAX_IN_FLIGHT": "0"}, cpus=8, gpu=False).max_in_flight == 0


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
    assert both["properties"]["texts"]["items"] == {"type": "string", "maxLength": 10_000,
                                                    "pattern": NOT_BLANK_PATTERN}
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
    # what a server started with the variable configures in BentoML (a fresh import reads the environment)
    import os
    import subprocess
    import sys

    probe = "import bentos.service as s; print(s.TextClassifier.config['logging']['access']['enabled'])"
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COMPRESSOR_ACCESS_LOG": flag}) for flag in ("0", "1")]
    assert [r.stdout.strip().splitlines()[-1:] for r in runs] == [["False"], ["True"]], runs[0].stderr[-2000:]


def test_blank_is_one_definition_for_the_schema_and_the_check():
    """Every character the published pattern calls blank, the validator refuses as blank, and the other way
    round, over the whole Basic Multilingual Plane and beyond (Python's and JSON Schema's whitespace differ:
    C0 separators and NEL are only Python's, the byte-order mark only ECMA-262's)."""
    import re

    pattern = re.compile(NOT_BLANK_PATTERN)
    disagree = [hex(c) for c in range(0x30000) if bool(pattern.search(chr(c))) == is_blank(chr(c))]
    assert not disagree
    assert {"\x1d", "\x85", "\ufeff", "\u3000"} <= set(BLANK_CHARS)
    for text in ("\x1d", "\ufeff \x85", "\u2003\t"):
        err = rejected(json.dumps({"texts": ["00\x89", text]}))
        assert err.error_code == 400 and "texts.1" in err.message
    assert service.ClassifyRequest.model_validate_json(json.dumps({"texts": ["00\x89", "\x1dx"]})).texts


async def _call(app, path: str, **scope) -> tuple[int, dict, bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "path": path, "method": "POST", "headers": [], **scope}, receive, send)
    return sent[0]["status"], dict(sent[0].get("headers", [])), b"".join(m.get("body", b"") for m in sent[1:])


def test_the_queue_bound_refuses_the_excess_at_once_with_retry_after():
    """With 3 requests held by the app behind it, the 4th /classify is refused at once: 503, Retry-After, the
    contract's one-line body; other routes pass; once one finishes, a new one is admitted."""
    import asyncio

    from bentos.admission import AdmissionMiddleware

    async def scenario():
        release = asyncio.Event()
        calls = []

        async def app(scope, receive, send):
            calls.append(scope["path"])
            if scope["path"] == "/classify":
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"[]"})

        bounded = AdmissionMiddleware(app, paths={"/classify"}, limit=3, retry_after_s=2)
        held = [asyncio.create_task(_call(bounded, "/classify")) for _ in range(3)]
        await asyncio.sleep(0.01)
        status, headers, body = await asyncio.wait_for(_call(bounded, "/classify"), 1)
        assert (status, headers[b"retry-after"]) == (503, b"2")
        assert "COMPRESSOR_MAX_IN_FLIGHT" in json.loads(body)["error"] and len(calls) == 3
        assert (await asyncio.wait_for(_call(bounded, "/model_info"), 1))[0] == 200
        release.set()
        assert [(await t)[0] for t in held] == [200, 200, 200]
        assert (await asyncio.wait_for(_call(bounded, "/classify"), 1))[0] == 200
        assert bounded.in_flight == 0

    asyncio.run(scenario())


def test_the_latency_budget_holds_a_standing_queue_and_spares_a_transient_one():
    """Requests answered in ~30 ms each, one at a time, make the estimate ~30 ms per held request. A queue that
    builds below the count bound is transient: with 3 held (limit 4) a 4th is admitted though it would wait
    ~120 ms, over the 50 ms budget. One more is refused at the count bound, and from then, requests arriving
    faster than they are answered, the worker is overloaded: with 2 held, below the count, a 3rd (~90 ms) is
    refused by the budget. Once the worker has held nothing for a while the overload is over: admitted again."""
    import asyncio

    from bentos.admission import AdmissionMiddleware

    async def scenario():
        async def app(scope, receive, send):
            await (scope["hold"].wait() if "hold" in scope else asyncio.sleep(0.03))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"[]"})

        bounded = AdmissionMiddleware(app, paths={"/classify"}, limit=4, retry_after_s=1, budget_s=0.05)
        for _ in range(5):  # answered one at a time: each sample is its own ~30 ms
            assert (await _call(bounded, "/classify"))[0] == 200
        assert 0.025 < bounded.per_request_s < 0.3 and 0.025 < bounded.alone_s < 0.3
        holds = [asyncio.Event() for _ in range(4)]
        held = [asyncio.create_task(_call(bounded, "/classify", hold=h)) for h in holds]
        await asyncio.sleep(0.01)
        assert bounded.in_flight == 4 and not bounded.overloaded  # all four admitted: a transient queue
        status, _, body = await asyncio.wait_for(_call(bounded, "/classify"), 1)
        assert status == 503 and "COMPRESSOR_MAX_IN_FLIGHT" in json.loads(body)["error"] and bounded.overloaded
        for h in holds[:2]:
            h.set()
        assert [(await t)[0] for t in held[:2]] == [200, 200] and bounded.in_flight == 2
        status, _, body = await asyncio.wait_for(_call(bounded, "/classify"), 1)
        assert status == 503 and "COMPRESSOR_QUEUE_BUDGET_MS" in json.loads(body)["error"]
        for h in holds[2:]:
            h.set()
        assert [(await t)[0] for t in held[2:]] == [200, 200] and bounded.in_flight == 0
        await asyncio.sleep(bounded.IDLE_S * 1.5)
        held = [asyncio.create_task(_call(bounded, "/classify", hold=h)) for h in holds[:3]]  # set: answered at once
        assert [(await t)[0] for t in held] == [200, 200, 200] and not bounded.overloaded

    asyncio.run(scenario())

    # the automatic budget: three times what a lone request takes, nothing until one is measured
    auto = AdmissionMiddleware(None, paths={"/classify"}, limit=4, retry_after_s=1)
    assert auto.budget() == 0.0
    auto.observe(0.02, held=1)
    auto.observe(0.5, held=10)  # a request that waited behind nine others says nothing of a lone one's time
    assert auto.budget() == pytest.approx(auto.AUTO_BUDGET * 0.02)


def test_a_request_not_answered_within_the_timeout_gets_a_504_and_frees_its_place():
    """The service's timeout is the admission middleware's (its timer cancelled with the answer, unlike
    BentoML's): a request the app has not answered in time gets a 504 with the contract's body and is no
    longer held; one answered in time is untouched."""
    import asyncio

    from bentos.admission import AdmissionMiddleware

    async def scenario():
        async def app(scope, receive, send):
            await asyncio.sleep(scope.get("takes", 0.0))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"[]"})

        bounded = AdmissionMiddleware(app, paths={"/classify"}, limit=4, retry_after_s=1, timeout_s=0.2)
        status, headers, body = await asyncio.wait_for(_call(bounded, "/classify", takes=5.0), 2)
        assert status == 504 and "within 0.2 s" in json.loads(body)["error"] and bounded.in_flight == 0
        assert headers[b"content-type"] == b"application/json"
        assert (await _call(bounded, "/classify", takes=0.01))[0] == 200 and bounded.in_flight == 0

    asyncio.run(scenario())


def test_the_served_app_enforces_the_service_timeout_itself(tiny_dir):
    """The worker's ASGI app is the admission middleware, outermost, and it carries the service's configured
    traffic timeout (BentoML's own timeout middleware, whose timers outlive their requests, is left out)."""
    import os
    import subprocess
    import sys

    probe = ("import bentos.service as s; app = s.TextClassifier.to_asgi(); "
             "print(type(app).__name__, app.timeout_s, s.TextClassifier.config['traffic']['timeout'])")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COMPRESSOR_MODEL_DIR": str(tiny_dir)})
    name, timeout, configured = run.stdout.strip().splitlines()[-1].split()
    assert name == "AdmissionMiddleware" and float(timeout) == float(configured) > 0, run.stderr[-2000:]
