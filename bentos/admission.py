"""A bound on the queue: each worker holds at most ``COMPRESSOR_MAX_IN_FLIGHT`` ``/classify`` requests (waiting
for a batch or in the model); one more is refused at once with a 503, ``Retry-After`` and the contract's error
body, so what is accepted keeps its latency under overload instead of everyone waiting seconds. It also times
every bounded request (``compressor_request_seconds``).

BentoML's own ``traffic.max_concurrency`` bounds requests the same way but answers 429 "Too many requests" from
a middleware outside this service's, for every route but the health ones, so it is not used: this is the
smallest addition that answers as the contract says.

While the worker drains before a shutdown (:data:`DRAINING`, set on SIGTERM), every response it sends says
``Connection: close``: clients open a new connection for their next request instead of reusing one the server
is about to close, which would lose a request sent at that moment."""
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

    def __init__(self, app, paths: Collection[str], limit: int, retry_after_s: int):
        self.app = app
        self.paths = frozenset(paths)
        self.limit = limit  # 0: no bound
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.limit and self.in_flight >= self.limit:
            await self._refuse(send, "overload", f"the server holds {self.in_flight} requests, its limit "
                                                 "(COMPRESSOR_MAX_IN_FLIGHT): retry after the Retry-After seconds")
            return
        start = time.perf_counter()
        held = {"status": 0, "in_flight": True}

        def release() -> None:
            if held["in_flight"]:
                held["in_flight"] = False
                self.in_flight -= 1

        async def send_timed(message) -> None:
            if message["type"] == "http.response.start":
                # answered: no longer held, before the client can see the answer and send its next request
                held["status"] = message["status"]
                release()
                if DRAINING.is_set():
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        self.in_flight += 1
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
