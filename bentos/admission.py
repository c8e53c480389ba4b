"""A bound on the queue: each worker holds at most ``COMPRESSOR_MAX_IN_FLIGHT`` ``/classify`` requests (waiting
for a batch or in the model); one more is refused at once with a 503, ``Retry-After`` and the contract's error
body, so what is accepted keeps its latency under overload instead of everyone waiting seconds. It also times
every bounded request (``compressor_request_seconds``) and answers 504 to one not answered within the service's
timeout. That timeout is here rather than in BentoML's ``TimeoutMiddleware``, which arms a timer per request and
never cancels it: each timer kept its request's context (futures, tracing spans) alive for the whole timeout,
about 300,000 objects at 16 clients on 2 cores, which every full garbage collection walked (~200 ms pauses, the
p99 of a soak). Here the timer is cancelled with the answer.

BentoML's own ``traffic.max_concurrency`` bounds requests the same way but answers 429 "Too many requests", for
every route but the health ones, so it is not used: this is the smallest addition that answers as the contract
says. It wraps the worker's whole ASGI app (``bentos.service.AdmittedService``), outside BentoML's metrics,
tracing and access-log middleware: a refusal costs uvicorn's parsing and this one response, and the count
includes requests still on their way through BentoML's stack.

While the worker drains before a shutdown (:data:`DRAINING`, set on SIGTERM), every response it sends says
``Connection: close``: clients open a new connection for their next request instead of reusing one the server
is about to close, which would lose a request sent at that moment.

Under sustained overload a second, tighter bound takes over: a latency budget (``COMPRESSOR_QUEUE_BUDGET_MS``).
The count bound has to let through what is not overload (a cluster of random arrivals, closed-loop clients)
without refusing it, so the wait it allows, the limit times the worker's seconds per request, is several
times the unloaded latency. A standing queue is told from a transient one by two signs together: a request
was refused at the count bound, and over the last second (``WINDOW_S``) requests arrived faster than the
worker answered them (``OVERLOAD_RATIO``). While both hold, a request is also refused when the requests
already held would keep it waiting past the budget. A transient queue, or traffic the worker keeps up with,
never meets the budget; a standing queue is held to it. This is the idea of CoDel (Nichols and Jacobson,
2012) as servers apply it to their request queues: refuse early only while the queue stands, not while it
passes.

The wait is estimated from what this worker measures, not configured: every answered request reports its
time in the worker divided by the number held when it came in (itself included), a moving average of which
is the worker's seconds per held request at its current speed (batching makes it smaller under load, a
slower machine larger). The budget's default (``auto``) is measured too: three times the moving average of
the time a request takes when it finds the worker idle, so it follows the machine and the model."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from typing import Collection

from bentos.observe import metrics

DRAINING = threading.Event()
"""Set when this worker has been told to shut down (see ``bentos.service.drain_on_sigterm``)."""


class AdmissionMiddleware:
    """Pure ASGI middleware over the ``paths`` it bounds; every other route passes untouched."""

    SMOOTHING = 0.05
    """Weight of each answered request in the moving averages of seconds per held request and alone."""
    AUTO_BUDGET = 3.0
    """The automatic budget, in multiples of the time a request takes when it finds the worker idle."""
    WINDOW_S = 1.0
    """Seconds over which arrivals and answers are counted to tell a standing overload from a transient queue."""
    OVERLOAD_RATIO = 1.25
    """Overloaded while more than this many requests arrive per request answered (over ``WINDOW_S``)."""
    IDLE_S = 0.1
    """A worker that has held nothing for this long is not overloaded, whatever the last window counted."""

    def __init__(self, app, paths: Collection[str], limit: int, retry_after_s: int, budget_s: float | None = None,
                 timeout_s: float = 0.0):
        self.app = app
        self.timeout_s = timeout_s  # 0: none
        self.paths = frozenset(paths)
        self.limit = limit  # 0: no count bound
        self.budget_s = budget_s  # None: automatic; 0: no latency budget
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0
        self.overloaded = False
        """Refused at the count bound, and requests still arrive faster than they are answered: the latency
        budget applies."""
        self.arrivals: deque[float] = deque()  # when each bounded request arrived, over the last WINDOW_S
        self.answers: deque[float] = deque()  # when each admitted request was answered, likewise
        self.idle_since = 0.0  # when the worker last held nothing
        self.per_request_s: float | None = None
        """Moving average of (seconds in the worker / requests held on arrival): None until one is answered."""
        self.alone_s: float | None = None
        """Moving average of the seconds of requests that found the worker idle: None until one is answered."""

    def budget(self) -> float:
        """The latency budget in seconds now; 0 while there is none (off, or automatic and nothing measured)."""
        if self.budget_s is not None:
            return self.budget_s
        return self.AUTO_BUDGET * self.alone_s if self.alone_s is not None else 0.0

    def _recent(self, events: deque[float], now: float) -> int:
        while events and events[0] < now - self.WINDOW_S:
            events.popleft()
        return len(events)

    def refusal(self, now: float) -> str | None:
        """Why one more request, arriving ``now``, is refused, or None: it is admitted."""
        self.arrivals.append(now)
        arrived, answered = self._recent(self.arrivals, now), self._recent(self.answers, now)
        if self.overloaded:  # until the worker answers nearly as many as arrive: a transient queue ends at once
            idle = not self.in_flight and now - self.idle_since > self.IDLE_S
            self.overloaded = arrived > self.OVERLOAD_RATIO * answered and not idle
        if self.limit and self.in_flight >= self.limit:
            self.overloaded = True
            return (f"the server holds {self.in_flight} requests, its limit (COMPRESSOR_MAX_IN_FLIGHT): retry after "
                    "the Retry-After seconds")
        if self.overloaded and self.in_flight and self.per_request_s is not None and (budget := self.budget()):
            wait = (self.in_flight + 1) * self.per_request_s
            if wait > budget:
                return (f"the {self.in_flight} requests the server holds would keep this one about {wait * 1e3:.0f} ms, "
                        f"over its budget of {budget * 1e3:.0f} ms under overload (COMPRESSOR_QUEUE_BUDGET_MS): "
                        "retry after the Retry-After seconds")
        return None

    def observe(self, seconds: float, held: int) -> None:
        self.per_request_s = self._smoothed(self.per_request_s, seconds / held)
        if held == 1:
            self.alone_s = self._smoothed(self.alone_s, seconds)

    def _smoothed(self, average: float | None, sample: float) -> float:
        return sample if average is None else average + self.SMOOTHING * (sample - average)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        if why := self.refusal(start):
            await self._refuse(send, "overload", why)
            return
        self.in_flight += 1
        held = {"status": 0, "in_flight": True, "on_arrival": self.in_flight}

        def release() -> None:
            if held["in_flight"]:
                held["in_flight"] = False
                self.in_flight -= 1
                now = time.perf_counter()
                self.answers.append(now)
                if not self.in_flight:
                    self.idle_since = now
                if held["status"] == 200:
                    self.observe(now - start, held["on_arrival"])

        async def send_timed(message) -> None:
            if message["type"] == "http.response.start":
                # answered: no longer held, before the client can see the answer and send its next request
                held["status"] = message["status"]
                release()
                if DRAINING.is_set():
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            if self.timeout_s:
                await asyncio.wait_for(self.app(scope, receive, send_timed), self.timeout_s)
            else:
                await self.app(scope, receive, send_timed)
        except asyncio.TimeoutError:
            if not held["status"]:  # nothing sent yet
                held["status"] = 504
                await self._error(send, 504, f"not answered within {self.timeout_s:g} s: send fewer or shorter texts "
                                             "per request")
        finally:
            release()
            metrics().request_seconds.labels(str(held["status"])).observe(time.perf_counter() - start)

    async def _refuse(self, send, reason: str, message: str) -> None:
        metrics().refusals.labels(reason).inc()
        await self._error(send, 503, message, [(b"retry-after", self.retry_after)])

    async def _error(self, send, status: int, message: str, headers: list | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})
