"""Under overload and shutdown, over real HTTP: the queue bound refuses the excess at once with a 503 and
Retry-After, the service's own metrics count what happened, and a SIGTERM under load drops no accepted request."""
from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bentos.local import bento_server

# a request sent as the server closed its connections: never read, so never accepted (no HTTP status)
CONNECTION_FAILURES = {"not connected", "ReadError", "RemoteProtocolError", "WriteError"}


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def counted(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_the_service_counts_what_it_refuses_and_times_what_it_answers(tiny_server, sst2_sentences):
    """Known traffic against the running service: 5 answered requests of 2 texts, 3 malformed bodies, 2 texts
    over the length limit; the service's metrics move by exactly those counts."""
    before = scrape(tiny_server.url)
    with httpx.Client(base_url=tiny_server.url, timeout=60, trust_env=False) as client:
        answered = [client.post("/classify", json={"texts": sst2_sentences[i:i + 2]}) for i in range(0, 10, 2)]
        malformed = [client.post("/classify", content=body, headers={"Content-Type": "application/json"})
                     for body in (b'{"texts": [', b'{"text": ["a"]}', b'{"texts": []}')]
        too_long = [client.post("/classify", json={"texts": ["a" * 20_000]}) for _ in range(2)]
    assert [r.status_code for r in answered] == [200] * 5
    assert [r.status_code for r in malformed] == [400] * 3 and [r.status_code for r in too_long] == [422] * 2
    after = scrape(tiny_server.url)

    def moved(name, **labels):
        return counted(after, name, **labels) - counted(before, name, **labels)

    assert moved("compressor_refusals_total", reason="malformed") == 3
    assert moved("compressor_refusals_total", reason="too_long") == 2
    assert moved("compressor_refusals_total", reason="overload") == 0
    assert moved("compressor_request_seconds_count", status="200") == 5
    assert moved("compressor_request_seconds_count", status="400") == 3
    assert moved("compressor_batch_size_sum") == 10  # every answered text went through one model call
    assert moved("compressor_batch_wait_seconds_count") == 10
    assert 1 <= moved("compressor_model_seconds_count") <= 5
    assert moved("compressor_model_seconds_sum") > 0


@pytest.fixture(scope="module")
def bounded_server(tiny_dir, tmp_path_factory):
    """One worker that holds at most one request: the second of two at once is refused (the count bound alone:
    no latency budget)."""
    env = {"COMPRESSOR_WORKERS": "1", "COMPRESSOR_THREADS": "1", "COMPRESSOR_MAX_IN_FLIGHT": "1",
           "COMPRESSOR_QUEUE_BUDGET_MS": "0", "COMPRESSOR_RETRY_AFTER_S": "3"}
    with bento_server(tiny_dir, env=env, log_dir=tmp_path_factory.mktemp("bounded")) as server:
        yield server


def test_the_excess_is_refused_at_once_with_retry_after_and_counted(bounded_server, sst2_sentences):
    body = {"texts": sst2_sentences[:16]}  # a model call long enough for others to arrive meanwhile
    before = scrape(bounded_server.url)
    with httpx.Client(base_url=bounded_server.url, timeout=60, trust_env=False,
                      limits=httpx.Limits(max_connections=32)) as client, ThreadPoolExecutor(32) as pool:
        def call(_):
            start = time.perf_counter()
            response = client.post("/classify", json=body)
            return response, time.perf_counter() - start

        results = list(pool.map(call, range(96)))
    statuses = [r.status_code for r, _ in results]
    refused = [(r, s) for r, s in results if r.status_code == 503]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1 and refused, statuses
    for response, _ in refused:
        assert response.headers["retry-after"] == "3"
        assert "COMPRESSOR_MAX_IN_FLIGHT" in response.json()["error"]
    after = scrape(bounded_server.url)
    assert counted(after, "compressor_refusals_total", reason="overload") - \
        counted(before, "compressor_refusals_total", reason="overload") == len(refused)
    assert counted(after, "compressor_request_seconds_count", status="200") - \
        counted(before, "compressor_request_seconds_count", status="200") == statuses.count(200)
    # refused outside BentoML's own middleware (metrics, tracing, access log): its request counter saw the
    # answered requests and none of the refused ones
    for status, expected in (("200", statuses.count(200)), ("503", 0)):
        assert counted(after, "bentoml_service_request_total", endpoint="/classify", http_response_code=status) - \
            counted(before, "bentoml_service_request_total", endpoint="/classify", http_response_code=status) \
            == expected, status


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_under_load_turns_readiness_off_first_and_answers_every_accepted_request(
        tiny_dir, sst2_sentences, tmp_path, workers):
    """16 clients keep sending; SIGTERM reaches the server; /readyz turns 503 while /classify still answers
    (the drain), then the server stops accepting, answers what it holds and exits. Every request sent while it
    was accepting is answered 200; after that, requests fail only to connect."""
    drain_s = 1.5
    env = {"COMPRESSOR_WORKERS": workers, "COMPRESSOR_THREADS": "1", "COMPRESSOR_DRAIN_S": str(drain_s),
           "COMPRESSOR_MAX_IN_FLIGHT": "0"}
    outcomes: list[tuple[float, str]] = []
    ready: list[tuple[float, int]] = []
    stop = threading.Event()
    with bento_server(tiny_dir, env=env, log_dir=tmp_path) as server:
        def client(i: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        outcomes.append((sent, str(http.post("/classify", json={"texts": [sst2_sentences[i]]})
                                                   .status_code)))
                    except httpx.ConnectError:
                        outcomes.append((sent, "not connected"))
                        time.sleep(0.05)
                    except httpx.HTTPError as err:
                        outcomes.append((sent, type(err).__name__))

        def probe() -> None:
            while not stop.is_set():
                try:
                    ready.append((time.monotonic(), httpx.get(f"{server.url}/readyz", timeout=5).status_code))
                except httpx.HTTPError:
                    ready.append((time.monotonic(), 0))
                time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)] + [threading.Thread(target=probe)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        signalled = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        deadline = signalled + 60
        while time.monotonic() < deadline and os.path.exists(f"/proc/{server.pid}") and \
                open(f"/proc/{server.pid}/stat").read().split()[2] != "Z":
            time.sleep(0.1)
        exited = time.monotonic()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(40)
    assert exited < deadline, "the server did not exit within 60 s of SIGTERM"
    assert {o for _, o in outcomes} <= {"200", *CONNECTION_FAILURES}, {o for _, o in outcomes}
    accepting = [o for s, o in outcomes if s < signalled + drain_s - 0.2]  # sent while the server accepted
    assert accepting and set(accepting) == {"200"}, sorted(set(accepting))
    # what the server answered, every client received: nothing accepted was lost on its way back
    log = server.log_path.read_text()
    answered = sum("path=/classify" in line and "status=200" in line for line in log.splitlines())
    assert answered == sum(o == "200" for _, o in outcomes)
    refused_ready = [t for t, status in ready if t >= signalled and status == 503]
    assert refused_ready and refused_ready[0] < signalled + drain_s, "readiness did not turn 503 during the drain"
