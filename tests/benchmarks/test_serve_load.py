"""benchmarks/serve_load.py: the load generator only ever loads this machine."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def serve_load():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_load_refuses_non_loopback_addresses(serve_load):
    with pytest.raises(serve_load.LoadError, match="loopback"):
        serve_load.run_load("http://192.0.2.1:3000", [{"texts": ["a"]}], 1, 1)
    assert serve_load.check_loopback("http://[::1]:3000/") == "http://[::1]:3000"


def test_generator_cores_split_the_machine_and_pin_the_processes(serve_load):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two usable cores")
    server, generator = serve_load.split_cores(1)
    assert server | generator == set(cores) and not server & generator and generator == {cores[-1]}
    assert serve_load.split_cores(0) == (None, None)
    with pytest.raises(serve_load.LoadError, match="give the generator fewer"):
        serve_load.split_cores(len(cores))
    for cpus in (server, generator):
        seen = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                              capture_output=True, text=True, check=True, preexec_fn=serve_load.pinned(cpus))
        assert seen.stdout.strip() == str(sorted(cpus))


def test_open_loop_sends_on_connections_opened_before_the_run(serve_load):
    """An open-loop run first opens its keep-alive connections (GET /healthz), so its timed requests do not pay
    for connecting: against a local server that records each request's client port, every /classify request
    (sent at a rate with fewer in flight than the warm connections) arrives on a connection /healthz opened,
    and each is answered 200."""
    import asyncio

    from aiohttp import web

    ports: dict[str, set] = {"/healthz": set(), "/classify": set()}

    async def record(request):
        ports[request.path].add(request.transport.get_extra_info("peername")[1])
        await asyncio.sleep(0.002)
        return web.json_response([{"label": "positive", "score": 1.0}])

    async def scenario():
        app = web.Application()
        app.router.add_get("/healthz", record)
        app.router.add_post("/classify", record)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            times = [i * 0.01 for i in range(40)]
            bodies = [b'{"texts": ["a fine film"]}'] * len(times)
            return await serve_load._open_load(f"http://127.0.0.1:{port}", bodies, times, timeout_s=10)
        finally:
            await runner.cleanup()

    outcomes, _ = asyncio.run(scenario())
    assert [status for status, _, _ in outcomes] == [200] * 40
    assert len(ports["/healthz"]) == serve_load.WARM_CONNECTIONS
    assert ports["/classify"] and ports["/classify"] <= ports["/healthz"]
