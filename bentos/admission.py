"""Admission control for ``/classify``: what a worker accepts keeps its latency when more arrives than it can
answer, and what it can answer is never refused.

Two kinds of queue look alike for a moment and must be told apart. A worker near its capacity holds a deep
queue and answers it in large batches (on 2 cores shared with its clients, traffic at 0.8x the capacity ran
with tens of requests held and p99 of hundreds of ms): that is not overload, and nothing may be refused. A
worker whose arrivals outrun its capacity holds a queue that grows without end: that is overload, and only a
short queue keeps the latency of what is accepted near the unloaded one. The depth cannot tell them apart; the
rate can. So the worker measures its **capacity** (requests/s: the most it answered over any second it was
busy throughout, ``WINDOW_S``; a window counts as busy while it waited for requests a tenth of it at most) and,
once its queue is as deep as where it reaches that capacity (``deep``: ``COMPRESSOR_MAX_IN_FLIGHT``'s automatic
setting is derived from it), compares the rate requests arrive at with it: over the last quarter second
(``SURGE_WINDOW_S``), or since the worker last became busy where that is shorter (but a tenth of a second at
least, ``MIN_SPAN_S``), more than ``SURGE_RATIO`` times the capacity is **overload**. A surge from idle is told
sooner: a queue that became deep within ``MIN_SPAN_S`` of the worker's last idle moment, its requests arriving
faster than ``ONSET_RATIO`` times the capacity, is an overload at once (at three times the capacity, some 20 ms
in). Until the queue is that deep the worker cannot tell such a surge from a short cluster of random
arrivals, so what it commits to the model meanwhile is kept small: while requests queue that fast, a model call
takes at most ``ONSET_BATCH`` items (BentoML's ``max_batch_size``, restored after). The rest waits in the queue,
where the budget below can still shed it; committed to one large batch, it would all be answered late.

While overloaded, a request that the requests already held would keep past the **latency budget**
(``COMPRESSOR_QUEUE_BUDGET_MS``; automatic: twice the measured time of a request that had the worker to
itself) is refused at once with a 503, ``Retry-After`` and the contract's error body, and BentoML's batching
dispatcher answers the same 503 to a queued request that has already waited past the budget (its own
``max_latency`` mechanism, lowered to the budget), instead of running it late: what queued before the overload
was recognised does not make the accepted requests' tail. The overload is over as soon as requests arrive no
faster than the capacity (over the last tenth of a second and over the last second), or the worker idles.

A bound on the count (``COMPRESSOR_MAX_IN_FLIGHT``, by default 16 times that depth: about a second of work)
refuses at once whatever would queue beyond it, and turns the budget on: the safety net for an overload too
mild for the rate test (under ``SURGE_RATIO``), and for a worker that has not yet measured its capacity (it
refuses nothing else until it has).

The wait a request would have is estimated from what this worker measures, not configured: every answered
request reports its time in the worker divided by the number held when it came in (itself included), a
moving average of which is the worker's seconds per held request at its current speed.

It also times every bounded request (``compressor_request_seconds``) and answers 504 to one not answered within
the service's timeout. That timeout is here rather than in BentoML's ``TimeoutMiddleware``, which arms a timer
per request and never cancels it: each timer kept its request's context (futures, tracing spans) alive for the
whole timeout, about 300,000 objects at 16 clients on 2 cores, which every full garbage collection walked (~200
ms pauses, the p99 of a soak). Here the timer is cancelled with the answer.

BentoML's own ``traffic.max_concurrency`` bounds requests by count but answers 429 "Too many requests", for
every route but the health ones, so it is not used. This middleware wraps the worker's whole ASGI app
(``bentos.service.AdmittedService``), outside BentoML's metrics, tracing and access-log middleware: a refusal
costs uvicorn's parsing and this one response, and the count includes requests still on their way through
BentoML's stack.

While the worker drains before a shutdown (:data:`DRAINING`, set on SIGTERM), every response it sends says
``Connection: close``: clients open a new connection for their next request instead of reusing one the server
is about to close, which would lose a request sent at that moment."""
from __future__ import annotations

import asyncio
import bisect
import json
import math
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
    AUTO_BUDGET = 2.0
    """The automatic budget, in multiples of the time a request takes when it has the worker to itself."""
    WINDOW_S = 1.0
    """Seconds over which answers are counted for the capacity."""
    BUSY_IDLE = 0.1
    """A window is busy, and its answers a sample of the capacity, if the worker held nothing for at most this
    fraction of it."""
    IDLE_GAP_S = 0.02
    """Holding nothing for this long ends a busy period (clients resending after their answers leave shorter
    gaps)."""
    CAPACITY_MEMORY_S = 3600.0
    """The capacity learned decays with this time constant, so a machine that became slower is followed."""
    SURGE_WINDOW_S = 0.25
    """Seconds over which the arrival rate is compared with the capacity, once the queue is deep."""
    MIN_SPAN_S = 0.1
    """The shortest span an arrival rate is measured over (from the start of a busy period)."""
    SURGE_RATIO = 1.3
    """Overloaded when, the queue deep, requests arrive faster than this many times the capacity."""
    ONSET_RATIO = 2.0
    """Within its first ``MIN_SPAN_S``, a busy period whose requests came faster than this many times the
    capacity (the queue deep) is a surge from idle, recognised as soon as the queue is deep rather than once
    ``MIN_SPAN_S`` has passed; the higher ratio keeps random traffic's short clusters out."""
    RECENT_S = 0.1
    """The overload ends when requests arrive no faster than the capacity over this many seconds (and over
    ``WINDOW_S``)."""
    IDLE_S = 0.1
    """A worker that has held nothing for this long is not overloaded."""
    ONSET_BATCH = 2
    """The most items a model call takes during a :meth:`fast_onset` while the queue is not yet deep enough to
    call it an overload."""

    def __init__(self, app, paths: Collection[str], limit: int, retry_after_s: int, budget_s: float | None = None,
                 timeout_s: float = 0.0, deep: int | None = None, queues: Collection = ()):
        self.app = app
        self.timeout_s = timeout_s  # 0: none
        self.paths = frozenset(paths)
        self.limit = limit  # 0: no admission control at all
        self.deep = limit if deep is None else min(deep, limit or deep)
        """Requests held at which the worker reaches its capacity: from here on, the arrival rate is compared
        with the capacity."""
        self.budget_s = budget_s  # None: automatic; 0: no latency budget
        self.retry_after = str(retry_after_s).encode()
        self.queues = {queue: (queue.max_latency, queue.max_batch_size) for queue in queues}
        """BentoML's batching dispatchers, each with its own ``max_latency`` and ``max_batch_size``: the latency
        lowered to the budget while overloaded, so a queued request that has waited past it is answered 503
        rather than late; the batch held to ``ONSET_BATCH`` during a fast onset."""
        self.onset = False
        """The batches are held to ``ONSET_BATCH``."""
        self.in_flight = 0
        self.overloaded = False
        """Requests arrive faster than the worker can answer them: the latency budget applies."""
        self.arrived_total = 0
        self.arrivals: deque[float] = deque()  # when each bounded request arrived, over the last WINDOW_S
        self.answers: deque[float] = deque()  # when each request was answered 200, likewise
        self.idle_since = 0.0  # when the worker last came to hold nothing
        self.busy_since = 0.0  # when it began to hold something after holding nothing for IDLE_GAP_S
        self.gaps: deque[tuple[float, float]] = deque()  # (end, seconds) of each spell of holding nothing, likewise
        self.gaps_s = 0.0  # their sum
        self.capacity: float | None = None
        """Requests/s: the most the worker answered over a busy ``WINDOW_S``; None until it has had one."""
        self.capacity_at = 0.0
        self.per_request_s: float | None = None
        """Moving average of (seconds in the worker / requests held on arrival): None until one is answered."""
        self.alone_s: float | None = None
        """Moving average of the seconds of requests that had the worker to themselves (none held when they
        arrived, none arrived before they were answered): None until one is answered."""

    def budget(self) -> float:
        """The latency budget in seconds now; 0 while there is none (off, or automatic and nothing measured)."""
        if self.budget_s is not None:
            return self.budget_s
        return self.AUTO_BUDGET * self.alone_s if self.alone_s is not None else 0.0

    def _recent(self, events: deque[float], now: float) -> int:
        while events and events[0] < now - self.WINDOW_S:
            events.popleft()
        return len(events)

    def _since(self, now: float, seconds: float) -> int:
        return len(self.arrivals) - bisect.bisect_left(self.arrivals, now - seconds)

    def arrival_rate(self, now: float, window_s: float) -> float:
        """Requests/s arrived over the last ``window_s``, or since the worker last became busy where that is
        shorter (but over ``MIN_SPAN_S`` at least)."""
        span = max(self.MIN_SPAN_S, min(window_s, now - self.busy_since))
        return self._since(now, span) / span

    def keeps_up(self, now: float) -> bool:
        """Whether an overload is over: the worker idles, or requests arrive no faster than its capacity."""
        if not self.in_flight and now - self.idle_since > self.IDLE_S:
            return True
        return (self.capacity is not None and self._since(now, self.RECENT_S) / self.RECENT_S <= self.capacity
                and self.arrival_rate(now, self.WINDOW_S) <= self.capacity)

    def fast_onset(self, now: float) -> bool:
        """Whether the worker became busy less than ``MIN_SPAN_S`` ago and requests have arrived since faster
        than ``ONSET_RATIO`` times its capacity (False while it is unknown)."""
        busy = now - self.busy_since
        return (self.capacity is not None and busy < self.MIN_SPAN_S
                and self._since(now, busy) > self.ONSET_RATIO * self.capacity * busy)

    def surge(self, now: float) -> bool:
        """Whether requests arrive faster than ``SURGE_RATIO`` times the capacity (False while it is unknown)."""
        return self.capacity is not None and self.arrival_rate(now, self.SURGE_WINDOW_S) > self.SURGE_RATIO * self.capacity

    def set_overloaded(self, overloaded: bool, shed: bool = True) -> None:
        """Enter or leave the overload; entering with ``shed``, the batching queue's latency budget drops to the
        admission budget."""
        self.overloaded = overloaded
        budget = self.budget() if overloaded and shed else 0.0
        for queue, (own, _) in self.queues.items():
            queue.max_latency = min(own, budget) if budget else own

    def set_onset(self, onset: bool) -> None:
        """Hold the batches to ``ONSET_BATCH`` or let them be as large as configured again."""
        if onset != self.onset:
            self.onset = onset
            for queue, (_, own) in self.queues.items():
                queue.max_batch_size = min(own, self.ONSET_BATCH) if onset else own

    def refusal(self, now: float) -> str | None:
        """Why one more request, arriving ``now``, is refused, or None: it is admitted."""
        self.arrivals.append(now)
        self.arrived_total += 1
        if not self.in_flight:
            gap = now - self.idle_since
            self.gaps.append((now, gap))
            self.gaps_s += gap
            if gap >= self.IDLE_GAP_S:
                self.busy_since = now
        self._recent(self.arrivals, now)
        if not self.limit:
            return None
        fast_onset = self.fast_onset(now)
        self.set_onset(self.in_flight > 0 and fast_onset)  # a lone request is not split
        if self.overloaded:
            if self.keeps_up(now):
                self.set_overloaded(False)
        elif self.in_flight >= self.deep and (fast_onset or self.surge(now)):
            self.set_overloaded(True)
        if self.in_flight >= self.limit:
            if not self.overloaded:
                self.set_overloaded(True, shed=False)  # what is held stays: no surge says it is stale
            return (f"the server holds {self.in_flight} requests, its limit (COMPRESSOR_MAX_IN_FLIGHT): retry after "
                    "the Retry-After seconds")
        if self.overloaded and self.in_flight and self.per_request_s is not None and (budget := self.budget()):
            wait = (self.in_flight + 1) * self.per_request_s
            if wait > budget:
                return (f"the {self.in_flight} requests the server holds would keep this one about {wait * 1e3:.0f} ms, "
                        f"over its budget of {budget * 1e3:.0f} ms under overload (COMPRESSOR_QUEUE_BUDGET_MS): "
                        "retry after the Retry-After seconds")
        return None

    def answered(self, now: float) -> None:
        """A request was answered 200 at ``now``: counted, and the capacity learned from a busy window."""
        self.answers.append(now)
        answered = self._recent(self.answers, now)  # trimmed at every answer, busy or not
        while self.gaps and self.gaps[0][0] < now - self.WINDOW_S:
            self.gaps_s -= self.gaps.popleft()[1]
        if now - self.busy_since >= self.WINDOW_S and self.gaps_s <= self.BUSY_IDLE * self.WINDOW_S:
            sample = answered / self.WINDOW_S
            if self.capacity is not None:
                sample = max(sample, self.capacity * math.exp((self.capacity_at - now) / self.CAPACITY_MEMORY_S))
            self.capacity, self.capacity_at = sample, now

    def observe(self, seconds: float, held: int, alone: bool = False) -> None:
        """A request answered 200 after ``seconds`` found ``held`` requests held on arrival (itself included);
        ``alone``: none arrived before it was answered either."""
        self.per_request_s = self._smoothed(self.per_request_s, seconds / held)
        if alone:
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
        held = {"status": 0, "in_flight": True, "on_arrival": self.in_flight, "arrived_total": self.arrived_total}

        def release() -> None:
            if held["in_flight"]:
                held["in_flight"] = False
                self.in_flight -= 1
                now = time.perf_counter()
                if held["status"] == 200:
                    self.answered(now)
                    self.observe(now - start, held["on_arrival"],
                                 alone=held["on_arrival"] == 1 and self.arrived_total == held["arrived_total"])
                if not self.in_flight:
                    self.idle_since = now
                if self.onset and now - self.busy_since >= self.MIN_SPAN_S:
                    self.set_onset(False)

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
