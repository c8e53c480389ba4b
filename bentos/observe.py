"""The service's own metrics, beside BentoML's in ``/metrics``: what a request's latency is made of and why
requests are refused.

=====================================  =========  ==================================================================
metric                                 kind       what
=====================================  =========  ==================================================================
compressor_request_seconds             histogram  ``/classify`` from the first byte in to the last byte out, by status
compressor_batch_wait_seconds          histogram  per item: from its request's validation to its model call's start
compressor_batch_size                  histogram  items per model call
compressor_model_seconds               histogram  one model call (tokenise, run, softmax)
compressor_refusals_total              counter    refused requests by reason: overload, malformed, too_long,
                                                  too_large (the body), wrong_kind (texts for a pair model...)
=====================================  =========  ==================================================================

Created in each worker after BentoML has set up its multiprocess metrics folder (prometheus_client must be
imported after ``PROMETHEUS_MULTIPROC_DIR`` is set), so ``/metrics`` sums them over the workers.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
REFUSALS = ("overload", "malformed", "too_long", "too_large", "wrong_kind")


@dataclass
class Metrics:
    request_seconds: Any
    batch_wait_seconds: Any
    batch_size: Any
    model_seconds: Any
    refusals: Any

    @classmethod
    def create(cls) -> "Metrics":
        import prometheus_client as prom

        refusals = prom.Counter("compressor_refusals", "Requests refused, by reason", ["reason"])
        for reason in REFUSALS:  # every reason shows from the start, at 0
            refusals.labels(reason)
        return cls(
            prom.Histogram("compressor_request_seconds", "/classify latency, first byte in to last byte out",
                           ["status"], buckets=LATENCY_BUCKETS),
            prom.Histogram("compressor_batch_wait_seconds", "Per item: validated to its model call's start",
                           buckets=LATENCY_BUCKETS),
            prom.Histogram("compressor_batch_size", "Items per model call", buckets=SIZE_BUCKETS),
            prom.Histogram("compressor_model_seconds", "One model call", buckets=LATENCY_BUCKETS),
            refusals,
        )


@functools.cache
def metrics() -> Metrics:
    """This worker's metrics, created on first use (in the worker, never in the process manager)."""
    return Metrics.create()
