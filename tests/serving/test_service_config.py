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
    two, eight = (settings.Settings.from_env({}, cpus=cpus, gpu=False) for cpus in (2, 8))
    # the depth at which a worker reaches its capacity: 8 per thread, never under 16 (a closed-loop measurement's
    # clients never make a worker judge itself overloaded); the bound on what it holds, 16 times that
    assert (two.threads, two.deep_queue, two.max_in_flight) == (2, 16, 16 * 16)
    assert (eight.threads, eight.deep_queue, eight.max_in_flight) == (4, 32, 16 * 32)
    three = settings.Settings.from_env({"COMPRESSOR_MAX_IN_FLIGHT": "3"}, cpus=8, gpu=False)
    assert (three.max_in_flight, three.deep_queue) == (3, 3)
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


class _Queue:
    """Stands in for BentoML's batching dispatcher: the two attributes admission control sets."""

    def __init__(self, max_latency: float, max_batch_size: int = 64):
        self.max_latency = max_latency
        self.max_batch_size = max_batch_size


def _busy_second(bounded, start: float, rate: float, held: int, seconds: float = 1.5) -> float:
    """``rate`` requests/s arrive and are answered at that rate while the worker holds ``held``: what a worker
    answering at its capacity sees. Returns the end time; asserts nothing was refused."""
    bounded.in_flight = held
    t = start
    while t < start + seconds:
        assert bounded.refusal(t) is None
        bounded.answered(t)
        t += 1 / rate
    return t


def test_a_deep_queue_at_the_capacity_is_admitted_and_a_surge_past_it_is_held_to_the_budget():
    """A worker that answered 200 requests/s over a busy second knows its capacity. Later, holding a deep queue
    (past the depth where it reaches that capacity) while requests keep arriving at 180/s, it refuses nothing:
    that queue is the worker running near its capacity, not an overload. Requests arriving at 600/s are a surge:
    from then on a request the held ones would keep past the budget is refused, and the batching queue's own
    latency budget drops to it (queued requests past it are answered 503, not late). Once arrivals fall to the
    capacity again the overload is over and the queue's budget is restored."""
    from bentos.admission import AdmissionMiddleware

    queue = _Queue(10.0)
    bounded = AdmissionMiddleware(None, paths={"/classify"}, limit=256, retry_after_s=1, budget_s=0.02, deep=16,
                                  queues=[queue])
    bounded.per_request_s = 0.005
    t = _busy_second(bounded, 100.0, rate=200, held=4)
    assert bounded.capacity == pytest.approx(200, rel=0.05)
    t = _busy_second(bounded, t, rate=180, held=40, seconds=3)  # 40 held: 200 ms of waiting, and nothing refused
    assert not bounded.overloaded and queue.max_latency == 10.0
    why = None
    for _ in range(60):  # 600 requests/s
        t += 1 / 600
        why = why or bounded.refusal(t)
    assert bounded.overloaded and queue.max_latency == pytest.approx(0.02)
    assert "COMPRESSOR_QUEUE_BUDGET_MS" in why
    bounded.in_flight = 2  # (2 + 1) x 5 ms: within the budget
    assert bounded.refusal(t + 0.001) is None
    t += 0.3
    for _ in range(30):  # 100 requests/s: no faster than the capacity
        t += 0.01
        bounded.refusal(t)
    assert not bounded.overloaded and queue.max_latency == 10.0


def _from_idle(bounded, rate: float, n: int, idle_s: float = 1.0) -> float | None:
    """After ``idle_s`` of nothing, ``n`` requests arrive at ``rate``/s and none is answered yet; the seconds
    from the first to the one at which the worker calls it an overload, or None."""
    bounded.in_flight, bounded.idle_since = 0, bounded.arrivals[-1]
    start = bounded.idle_since + idle_s
    for i in range(n):
        now = start + i / rate
        bounded.in_flight = i
        bounded.refusal(now)
        if bounded.overloaded:
            return now - start
    return None


def test_a_surge_from_idle_is_recognised_as_soon_as_the_queue_is_deep():
    """A worker idle for a second, then requests at 3x its capacity: overloaded at the arrival that finds the
    queue deep (16 held), 27 ms in, not after a tenth of a second of them; the same count arriving at the
    capacity's pace from idle is not an overload."""
    from bentos.admission import AdmissionMiddleware

    bounded = AdmissionMiddleware(None, paths={"/classify"}, limit=256, retry_after_s=1, budget_s=0.02, deep=16)
    _busy_second(bounded, 100.0, rate=200, held=4)
    assert _from_idle(bounded, rate=200, n=40) is None
    assert _from_idle(bounded, rate=600, n=60) == pytest.approx(16 / 600)


def test_a_fast_onset_gets_small_batches_until_it_is_told_from_random_traffic():
    """From idle, requests queueing faster than twice the capacity get model calls of at most ``ONSET_BATCH``
    items until the queue is deep enough to call it an overload: what a surge commits to the model before it
    is recognised stays small (the rest waits where the budget can shed it). A lone request is not split,
    traffic at 0.8x the capacity is never held to small batches, and past ``MIN_SPAN_S`` the configured size
    is back."""
    from bentos.admission import AdmissionMiddleware

    queue = _Queue(10.0, max_batch_size=64)
    bounded = AdmissionMiddleware(None, paths={"/classify"}, limit=256, retry_after_s=1, budget_s=0.02, deep=16,
                                  queues=[queue])
    t = _busy_second(bounded, 100.0, rate=200, held=4)

    def from_idle(start: float, rate: float, n: int) -> list[int]:
        bounded.in_flight, bounded.idle_since = 0, bounded.arrivals[-1]
        sizes = []
        for i in range(n):
            bounded.in_flight = i
            bounded.refusal(start + i / rate)
            sizes.append(queue.max_batch_size)
        return sizes

    assert from_idle(t + 1.0, rate=160, n=30) == [64] * 30
    onset = AdmissionMiddleware.ONSET_BATCH
    assert from_idle(t + 2.0, rate=600, n=17) == [64] + [onset] * 16
    assert bounded.overloaded
    bounded.in_flight = 1
    bounded.refusal(t + 2.0 + AdmissionMiddleware.MIN_SPAN_S)
    assert queue.max_batch_size == 64


def test_a_worker_that_is_never_busy_keeps_only_a_seconds_history():
    """Light traffic (one request every 50 ms, each answered in 2 ms) never makes a busy second, so no capacity is
    learned; what the worker remembers of arrivals, answers and idle spells stays the last second's, however long
    it serves."""
    from bentos.admission import AdmissionMiddleware

    bounded = AdmissionMiddleware(None, paths={"/classify"}, limit=256, retry_after_s=1, deep=16)
    t = 100.0
    for _ in range(2000):  # 100 s
        assert bounded.refusal(t) is None
        bounded.in_flight = 1
        bounded.answered(t + 0.002)
        bounded.in_flight, bounded.idle_since = 0, t + 0.002
        t += 0.05
    assert bounded.capacity is None
    per_second = round(bounded.WINDOW_S / 0.05)
    assert max(len(bounded.arrivals), len(bounded.answers), len(bounded.gaps)) <= per_second + 1


def test_without_a_measured_capacity_only_the_count_bound_refuses():
    """A worker that has not yet been busy for a whole second refuses only at ``COMPRESSOR_MAX_IN_FLIGHT``
    (and then holds arrivals to the budget, leaving what it holds queued: nothing says it is stale)."""
    from bentos.admission import AdmissionMiddleware

    queue = _Queue(10.0)
    bounded = AdmissionMiddleware(None, paths={"/classify"}, limit=64, retry_after_s=1, budget_s=0.02, deep=16,
                                  queues=[queue])
    bounded.per_request_s = 0.005
    bounded.in_flight = 63
    for i in range(200):  # 2,000 requests/s, a deep queue: no capacity known, nothing refused below the count
        assert bounded.refusal(100.0 + i / 2000) is None
    assert bounded.capacity is None and not bounded.overloaded
    bounded.in_flight = 64
    assert "COMPRESSOR_MAX_IN_FLIGHT" in bounded.refusal(100.2)
    assert bounded.overloaded and queue.max_latency == 10.0
    bounded.in_flight = 10
    assert "COMPRESSOR_QUEUE_BUDGET_MS" in bounded.refusal(100.201)


def test_the_automatic_budget_is_twice_the_time_of_a_request_that_had_the_worker_to_itself():
    from bentos.admission import AdmissionMiddleware

    auto = AdmissionMiddleware(None, paths={"/classify"}, limit=4, retry_after_s=1)
    assert auto.budget() == 0.0
    auto.observe(0.02, held=1, alone=True)
    auto.observe(0.5, held=10)  # a request that waited behind nine others says nothing of a lone one's time
    auto.observe(0.3, held=1)  # nor does one that others arrived behind (the event loop served them too)
    assert auto.budget() == pytest.approx(auto.AUTO_BUDGET * 0.02)
    assert auto.AUTO_BUDGET == 2.0


def test_a_request_shed_from_the_batching_queue_gets_the_contracts_503(monkeypatch):
    """What BentoML's dispatcher answers for a queued request past its latency budget: returned, not raised
    (BentoML would log a raised one as a server error and replace its message), with Retry-After, counted."""
    from bentos.observe import metrics

    before = metrics().refusals.labels("overload")._value.get()
    response = service.shed()
    body = json.loads(response.body)
    assert response.status_code == 503 and response.headers["retry-after"] == str(service.SETTINGS.retry_after_s)
    assert list(body) == ["error"] and "COMPRESSOR_QUEUE_BUDGET_MS" in body["error"]
    assert metrics().refusals.labels("overload")._value.get() == before + 1


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
