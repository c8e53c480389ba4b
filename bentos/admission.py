"""A bound on the queue: each worker holds at most ``COMPRESSOR_MAX_IN_FLIGHT`` ``/classify`` requests (waiting
for a batch or in the model); one more is refused at once with a 503, ``Retry-After`` and the contract's error
body, so what is accepted keeps its latency under overload instead of everyone waiting seconds. It also times
every bounded request (``compressor_request_seconds``).

BentoML's own ``traffic.max_concurrency`` bounds requests the same way but answers 429 "Too many requests", for
every route but the health ones, so it is not used: this is the smallest addition that answers as the contract
says. It wraps the worker's whole ASGI app (``bentos.service.AdmittedService``), outside BentoML's metrics,
tracing and access-log middleware: a refusal costs uvicorn's parsing and this one response, and the count
includes requests still on their way through BentoML's stack.

While the worker drains before a shutdown (:data:`DRAINING`, set on SIGTERM), every response it sends says
``Connection: close``: clients open a new connection for their next request instead of reusing one the server
is about to close, which would lose a request sent at that moment.

Optionally a latency budget (``COMPRESSOR_QUEUE_BUDGET_MS``, see ``bentos/settings.py`` for when) refuses earlier
than the count: a request is refused when the requests already held would keep it waiting longer than the
budget. The wait is estimated from what this worker measures, not configured: every answered request reports
its time in the worker divided by the number held when it came in (itself included), a moving average of which
is the worker's seconds per held request at its current speed (batching makes it smaller under load, a slower machine larger). So the
bound follows the worker's measured capacity: ``budget / seconds per request`` requests, at least one."""
from __future__ import annotations

import json
import threading
import time
from typing import Collection

from bentos.observe import metrics

DRAINING = threading.Event()
"""Set when this worker has been told to shut down (see ``bentos.service.drain_on_sigterm``)."""


class AdmissionMiddleware:
    """Pure ASGI middleware over the ``paths`` it bounds; every other route passes untouched."""

    SMOOTHING = 0.05
    """Weight of each answered request in the moving average of seconds per held request."""

    def __init__(self, app, paths: Collection[str], limit: int, retry_after_s: int, budget_s: float = 0.0):
        self.app = app
        self.paths = frozenset(paths)
        self.limit = limit  # 0: no count bound
        self.budget_s = budget_s  # 0: no latency budget
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0
        self.per_request_s: float | None = None
        """Moving average of (seconds in the worker / requests held on arrival): None until one is answered."""

    def refusal(self) -> str | None:
        """Why one more request is refused now, or None: it is admitted."""
        if self.limit and self.in_flight >= self.limit:
            return (f"the server holds {self.in_flight} requests, its limit (COMPRESSOR_MAX_IN_FLIGHT): retry after "
                    "the Retry-After seconds")
        if self.budget_s and self.in_flight and self.per_request_s is not None:
            wait = (self.in_flight + 1) * self.per_request_s
            if wait > self.budget_s:
                return (f"the {self.in_flight} requests the server holds would keep this one about {wait * 1e3:.0f} ms, "
                        f"over its budget of {self.budget_s * 1e3:.0f} ms (COMPRESSOR_QUEUE_BUDGET_MS): retry after "
                        "the Retry-After seconds")
        return None

    def observe(self, seconds: float, held: int) -> None:
        sample = seconds / held
        average = self.per_request_s
        self.per_request_s = sample if average is None else average + self.SMOOTHING * (sample - average)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if why := self.refusal():
            await self._refuse(send, "overload", why)
            return
        start = time.perf_counter()
        self.in_flight += 1
        held = {"status": 0, "in_flight": True, "on_arrival": self.in_flight}

        def release() -> None:
            if held["in_flight"]:
                held["in_flight"] = False
                self.in_flight -= 1
                if held["status"] == 200:
                    self.observe(time.perf_counter() - start, held["on_arrival"])

        async def send_timed(message) -> None:
            if message["type"] == "http.response.start":
                # answered: no longer held, before the client can see the answer and send its next request
                held["status"] = message["status"]
                release()
                if DRAINING.is_set():
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            release()
            metrics().request_seconds.labels(str(held["status"])).observe(time.perf_counter() - start)

    async def _refuse(self, send, reason: str, message: str) -> None:
        metrics().refusals.labels(reason).inc()
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", self.retry_after)]})
        await send({"type": "http.response.body", "body": body})
