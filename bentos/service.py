"""BentoML service: the compressed classifier over HTTP, with adaptive batching across requests.

``POST /classify`` validates one request (a pydantic model: a 4xx answer naming the problem, never a 500 for
a client's mistake), then calls the batchable ``POST /predict`` through the service's own in-process client
(``self.to_async``), so the call goes through BentoML's batching dispatcher: the item lists of concurrent
requests are concatenated into one ``runtime.Classifier`` call and the answers split back
(``bentoml_service_adaptive_batch_size`` in ``/metrics`` counts requests per call). (``self.predict`` would
pick the blocking client for this sync API and stall the event loop; a second service via ``bentoml.depends``
would add a process and a socket hop to every request.)

Configuration is read from the environment when this module is imported (``bentoml serve`` imports it in
every process), so one Bento serves any model and any batching policy:

=============================  ==========  =====================================================================
variable                       default     meaning
=============================  ==========  =====================================================================
COMPRESSOR_MODEL_DIR           (required)  HF classification directory or ``runtime.export`` directory
COMPRESSOR_BACKEND             auto        ``runtime.Classifier.load(backend=...)``
COMPRESSOR_VARIANT             (best)      export variant: fp32, optimized, fp16, int8
COMPRESSOR_MAX_ITEMS           64          most texts (or pairs) one request may carry
COMPRESSOR_BATCHING            1           0 turns adaptive batching off (each request runs alone)
COMPRESSOR_MAX_BATCH_SIZE      64          most texts in one model call
COMPRESSOR_MAX_LATENCY_MS      10000       BentoML's latency budget: queued requests past it get a 503
=============================  ==========  =====================================================================
"""
from __future__ import annotations

import os
from typing import Annotated, Any, Optional, Union

import bentoml
from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse

SERVICE_TIMEOUT_S = 60
# BentoML 1.4's internal client re-creates its session every `max_requests` calls or `max_age` seconds and
# closes the old one with requests still in flight on it ("Cannot write to closing transport" -> 500s under
# load). The self-call below is in-process (an ASGI connector, no sockets), so there is nothing to recycle.
NEVER_RECYCLE = {"max_requests": 2**31 - 1, "max_age": 1e9}


class ServiceConfigError(ValueError):
    """The serving environment is misconfigured; the message names the variable to fix."""


def env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServiceConfigError(f"{name}={raw!r} is not an integer: set it to a whole number >= {minimum}") from None
    if value < minimum:
        raise ServiceConfigError(f"{name}={value} is below {minimum}: set it to a whole number >= {minimum}")
    return value


def env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        raise ServiceConfigError(f"{name}={raw!r} is not a flag: set it to 1 or 0")
    return raw in {"1", "true", "yes", "on"}


MAX_ITEMS = env_int("COMPRESSOR_MAX_ITEMS", 64, 1)
BATCHING = env_flag("COMPRESSOR_BATCHING", True)
MAX_BATCH_SIZE = env_int("COMPRESSOR_MAX_BATCH_SIZE", 64, 2)
MAX_LATENCY_MS = env_int("COMPRESSOR_MAX_LATENCY_MS", 10_000, 1)


def not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("texts must not be empty or only whitespace")
    return text


Text = Annotated[str, StringConstraints(strict=True), AfterValidator(not_blank)]
Pair = tuple[Text, Text]
Item = Union[str, tuple[str, str], list[str]]


class JSONBody(bentoml.IODescriptor):
    """A request body that is JSON whatever its Content-Type says: a malformed form or multipart body is then
    a 400 validation error instead of BentoML's 500 for a form it cannot parse. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> "JSONBody":
        return cls.model_validate_json(await request.body() or b"{}")


class PredictRequest(JSONBody):
    """``{"items": [text | [text, text_pair], ...]}``: the batchable form (single texts and pairs may mix)."""

    items: list[Union[Text, Pair]] = Field(min_length=1, max_length=MAX_ITEMS)


class ClassifyRequest(JSONBody):
    """``{"texts": [...]}`` for single-text tasks or ``{"pairs": [[a, b], ...]}`` for pair tasks."""

    texts: Optional[list[Text]] = Field(None, min_length=1, max_length=MAX_ITEMS,
                                        description="non-blank strings to classify")
    pairs: Optional[list[Pair]] = Field(None, min_length=1, max_length=MAX_ITEMS,
                                        description="[text, text_pair] lists of two non-blank strings")

    @model_validator(mode="after")
    def exactly_one(self) -> "ClassifyRequest":
        if (self.texts is None) == (self.pairs is None):
            raise ValueError('send exactly one of "texts" (a list of strings) or "pairs" (a list of [a, b] lists)')
        return self


def classify_mixed(classifier, items: list[Item]) -> list[dict]:
    """Classify a batch that may hold texts and pairs from different requests, answers in input order."""
    answers: list[dict | None] = [None] * len(items)
    for is_pair in (False, True):
        positions = [i for i, item in enumerate(items) if isinstance(item, (tuple, list)) == is_pair]
        if positions:
            group = [tuple(items[i]) if is_pair else items[i] for i in positions]
            for i, answer in zip(positions, classifier(group)):
                answers[i] = answer
    return answers


def load_classifier():
    from runtime import Classifier

    path = os.environ.get("COMPRESSOR_MODEL_DIR", "").strip()
    if not path:
        raise ServiceConfigError("COMPRESSOR_MODEL_DIR is not set: point it at an HF classification directory "
                                 "or a runtime.export directory")
    return Classifier.load(path, backend=os.environ.get("COMPRESSOR_BACKEND", "auto"),
                           variant=os.environ.get("COMPRESSOR_VARIANT") or None, batch_size=MAX_BATCH_SIZE)


@bentoml.service(workers=1, threads=1, traffic={"timeout": SERVICE_TIMEOUT_S}, runner_connection=NEVER_RECYCLE)
class TextClassifier:
    """``POST /classify`` (validated, one request's texts) feeds ``POST /predict`` (batchable: the lists of
    concurrent requests are concatenated into one model call), plus ``POST /model_info`` and BentoML's
    /healthz, /readyz, /metrics and OpenAPI (/docs.json)."""

    def __init__(self) -> None:
        self.classifier = load_classifier()
        self.info = {**self.classifier.info(),
                     "batching": {"enabled": BATCHING, "max_batch_size": MAX_BATCH_SIZE,
                                  "max_latency_ms": MAX_LATENCY_MS, "max_items_per_request": MAX_ITEMS}}

    @bentoml.api(input_spec=ClassifyRequest)
    async def classify(self, texts: Optional[list[str]] = None,
                       pairs: Optional[list[tuple[str, str]]] = None) -> list[dict[str, Any]]:
        """Labels with softmax scores (regression: the score), one per input, in order; ``truncated`` is true
        for inputs longer than the model's maximum length, which were cut to fit."""
        mismatch = task_mismatch(self.classifier.is_pair, pairs is not None)
        if mismatch:
            return JSONResponse({"error": mismatch}, status_code=422)
        items = texts if texts is not None else [list(pair) for pair in pairs]
        # through the service's own client, so the call joins the batching queue of `predict`
        return await self.to_async.predict(items=items)

    @bentoml.api(input_spec=PredictRequest, batchable=BATCHING, max_batch_size=MAX_BATCH_SIZE,
                 max_latency_ms=MAX_LATENCY_MS)
    def predict(self, items: list[Item]) -> list[dict[str, Any]]:
        """The batchable entry point: texts and [text, text_pair] lists, possibly mixed."""
        return classify_mixed(self.classifier, items)

    @bentoml.api
    async def model_info(self) -> dict[str, Any]:
        """Labels, back end and providers really in use, model hash, maximum length, batching settings."""
        return self.info


def task_mismatch(model_is_pair: bool | None, request_is_pair: bool) -> str | None:
    """A one-line error when the request's shape contradicts the model's task (unknown task: accept both)."""
    if model_is_pair is None or model_is_pair == request_is_pair:
        return None
    if model_is_pair:
        return 'this model classifies sentence pairs: send {"pairs": [[text, text_pair], ...]}'
    return 'this model classifies single texts: send {"texts": [text, ...]}'
