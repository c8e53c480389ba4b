"""BentoML service: the compressed classifier over HTTP, with adaptive batching across requests.

``POST /classify`` is itself the batchable API. Its input descriptor validates a request once (one pydantic
pass over the JSON body: texts, lengths, the model's input kind) and hands BentoML's batching dispatcher the
request's list of items; the dispatcher concatenates the lists of concurrent requests into one
``runtime.Classifier`` call, which tokenises them once, groups them by length and splits the answers back
(``bentoml_service_adaptive_batch_size`` in ``/metrics`` counts requests per call). A bad request never
reaches the batch: it is answered 400 (malformed), 422 (a text over ``COMPRESSOR_MAX_CHARS``, texts for a pair
model or pairs for a single-text one) or 413 (a body larger than any valid request) with ``{"error": "<one
line naming the fix>"}``. The published request schema is the served model's: ``texts`` only for a
single-text model, ``pairs`` only for a pair model, either for a model whose config does not say.

Settings come from the environment (``bentos/settings.py``: model, limits, batching, workers, threads) and,
for ``bentoml build``, from BentoML arguments (``--arg device=gpu`` picks the GPU image, ``--arg
model=NAME:VERSION`` the stored model to pack).
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal, Union

import bentoml
from bentoml._internal.marshal.dispatcher import Optimizer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from typing_extensions import NotRequired, TypedDict

from bentos.admission import DRAINING, AdmissionMiddleware
from bentos.contract import ContractMiddleware, RequestRejected
from bentos.observe import metrics
from bentos.settings import ServiceConfigError, Settings
from bentos.store import REPORT_FILE
from runtime.encoding import NOT_BLANK_PATTERN, is_blank

# the tokenizer's own thread pool would compete with the model's threads for the worker's share of cores
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETTINGS = Settings.from_env()
SERVICE_TIMEOUT_S = 60
GIL_SWITCH_S = 0.0002
"""The worker's GIL switch interval (``sys.setswitchinterval``). Measured on one core (the ERNIE-Tiny-shaped export,
open-loop traffic at 120 requests/s): at Python's default 5 ms the worker's CPU was 94% busy, its model calls
took 13.3 ms for two texts on average, the median answer 34.5 ms; at 0.2 ms 73% busy, 4.5 ms per call (one text:
the in-process model takes 4.8), the median 6.3 ms, and 16 closed-loop clients got 12% more requests/s."""
# the largest body that can hold a valid request: every text at the limit, each character JSON-escaped
MAX_BODY_BYTES = SETTINGS.max_items * 2 * SETTINGS.max_chars * 12 + 65_536
DEFAULT_MODEL = "ernie-tiny-classifier:latest"


class BentoArgs(BaseModel):
    """``bentoml build/serve --arg KEY=VALUE``: the image and the stored model a Bento is built with."""

    model_config = ConfigDict(extra="forbid")
    device: Literal["cpu", "gpu"] = "cpu"
    model: str = DEFAULT_MODEL


ARGS = bentoml.use_arguments(BentoArgs)
# The ONNX Runtime path needs no torch: the CPU image has none (it serves runtime.export directories); the
# GPU image has onnxruntime-gpu and CUDA torch (PyPI's Linux wheels), for ORT CUDA or the torch back end.
# One CUDA major for both: PyPI's onnxruntime-gpu is built for CUDA 12 and torch up to 2.10 ships CUDA 12
# libraries (2.11 and later ship CUDA 13); runtime imports torch first, which loads them for ORT's CUDA EP.
RUNTIME_PACKAGES = ("transformers>=4.57,<4.58", "tokenizers>=0.21", "numpy", "uvloop>=0.19", "httptools>=0.6",
                    "pydantic-settings>=2.3")
IMAGES = {
    "cpu": bentoml.images.Image(python_version="3.11").python_packages(*RUNTIME_PACKAGES, "onnxruntime>=1.20"),
    "gpu": bentoml.images.Image(python_version="3.11").python_packages(
        *RUNTIME_PACKAGES, "onnxruntime-gpu>=1.20,<2", "torch>=2.4,<2.11", "safetensors"),
}


def not_blank(text: str) -> str:
    if is_blank(text):
        raise ValueError("must not be empty or only whitespace")
    return text


# the published pattern and not_blank are one definition of "blank" (runtime.encoding.BLANK_CHARS)
Text = Annotated[str, StringConstraints(strict=True, max_length=SETTINGS.max_chars), AfterValidator(not_blank),
                 Field(json_schema_extra={"pattern": NOT_BLANK_PATTERN})]
Pair = Annotated[list[Text], Field(min_length=2, max_length=2, description="[text, text_pair]")]
Item = Union[str, tuple[str, str]]


def _no_default(schema: dict) -> None:
    schema.pop("default", None)


class ClassifyRequest(BaseModel):
    """``{"texts": [...]}`` for single-text models or ``{"pairs": [[a, b], ...]}`` for pair models."""

    model_config = ConfigDict(extra="forbid", title="ClassifyRequest",
                              json_schema_extra={"oneOf": [{"required": ["texts"]}, {"required": ["pairs"]}]})

    texts: list[Text] = Field(None, min_length=1, max_length=SETTINGS.max_items, json_schema_extra=_no_default,
                              description="non-blank strings to classify")
    pairs: list[Pair] = Field(None, min_length=1, max_length=SETTINGS.max_items, json_schema_extra=_no_default,
                              description="[text, text_pair] lists of two non-blank strings")

    @model_validator(mode="after")
    def exactly_one(self) -> "ClassifyRequest":
        if (self.texts is None) == (self.pairs is None):
            raise ValueError('send exactly one of "texts" (a list of strings) or "pairs" (a list of [a, b] lists)')
        return self


def refused(status: int, reason: str, message: str) -> RequestRejected:
    """A refusal with its status, counted by reason in ``compressor_refusals_total``."""
    metrics().refusals.labels(reason).inc()
    return RequestRejected(status, message)


def rejection(exc: ValidationError) -> RequestRejected:
    """The first problem of a refused body, on one line naming the fix, with its status."""
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "string_too_long":
        return refused(422, "too_long", f"{where} is longer than {SETTINGS.max_chars} characters, the limit per text "
                                    "(COMPRESSOR_MAX_CHARS): shorten or split it")
    if first["type"] == "json_invalid":
        message = f'the body is not valid JSON ({message}): send {{"texts": [...]}} or {{"pairs": [[a, b], ...]}}'
    elif first["type"] == "extra_forbidden":
        message = f'unknown key "{where}": send "texts" or "pairs"'
    elif first["type"] == "too_long" and len(first["loc"]) == 1:
        message = f"{where}: {message} (COMPRESSOR_MAX_ITEMS): split the request"
    elif where:
        message = f"{where}: {message}"
    return refused(400, "malformed", message)


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``limit`` bytes (never read whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise refused(413, "too_large", f"the body is {int(declared)} bytes, over the {limit} that the largest valid "
                                   "request needs: send fewer or shorter texts")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise refused(413, "too_large", f"the body is over {limit} bytes, more than the largest valid request "
                                       "needs: send fewer or shorter texts")
        chunks.append(chunk)
    return b"".join(chunks)


def task_mismatch(model_is_pair: bool | None, request_is_pair: bool) -> str | None:
    """A one-line error when the request's shape contradicts the model's input kind (unknown: accept both)."""
    if model_is_pair is None or model_is_pair == request_is_pair:
        return None
    if model_is_pair:
        return 'this model classifies sentence pairs: send {"pairs": [[text, text_pair], ...]}'
    return 'this model classifies single texts: send {"texts": [text, ...]}'


class NoInput(bentoml.IODescriptor):
    """An empty JSON object (or no body), whatever the Content-Type says."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    async def from_http_request(cls, request, serde) -> "NoInput":
        try:
            return cls.model_validate_json(await read_body(request, 65_536) or b"{}")
        except ValidationError as exc:
            raise rejection(exc) from None


class ClassifyInput(bentoml.IODescriptor):
    """The batch unit of /classify: one request's items (texts, or (text, text_pair) tuples).

    The HTTP body and its published schema are :class:`ClassifyRequest`'s, narrowed to the served model's
    input kind; the body is parsed once, whatever its Content-Type, and the validated items are handed on
    without a second validation."""

    items: list[Item]
    model_is_pair: ClassVar[bool | None] = None  # the served model's input kind, set when it is loaded

    @classmethod
    async def from_http_request(cls, request, serde) -> "ClassifyInput":
        try:
            body = ClassifyRequest.model_validate_json(await read_body(request, MAX_BODY_BYTES) or b"{}")
        except ValidationError as exc:
            raise rejection(exc) from None
        is_pair = body.pairs is not None
        if mismatch := task_mismatch(cls.model_is_pair, is_pair):
            raise refused(422, "wrong_kind", mismatch)
        now = time.perf_counter()
        return cls.model_construct(items=[stamped(item, now) for item in (body.pairs if is_pair else body.texts)])

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        schema = ClassifyRequest.model_json_schema(*args, **kwargs)
        if cls.model_is_pair is not None:
            key = "pairs" if cls.model_is_pair else "texts"
            schema["properties"] = {key: schema["properties"][key]}
            schema["required"] = [key]
            del schema["oneOf"]
        return schema


class StampedText(str):
    """A validated text that remembers when it was validated (for ``compressor_batch_wait_seconds``)."""

    validated: float


class StampedPair(tuple):
    """A validated (text, text_pair) that remembers when it was validated."""

    validated: float


def stamped(item: str | list[str], now: float) -> StampedText | StampedPair:
    out = StampedPair(item) if isinstance(item, list) else StampedText(item)
    out.validated = now
    return out


class Prediction(TypedDict):
    label: NotRequired[str]  # absent for regression models
    score: float
    truncated: bool


def classify_mixed(classifier, items: list[Item]) -> list[dict]:
    """Classify a batch that may hold texts and pairs from different requests (a model of unknown input
    kind accepts both), answers in input order."""
    kinds = {isinstance(item, tuple) for item in items}
    if len(kinds) < 2:
        return classifier(items)
    answers: list[dict | None] = [None] * len(items)
    for is_pair in (False, True):
        positions = [i for i, item in enumerate(items) if isinstance(item, tuple) == is_pair]
        for i, answer in zip(positions, classifier([items[i] for i in positions])):
            answers[i] = answer
    return answers


def drain_on_sigterm(seconds: float, drain: Callable[[], None]) -> None:
    """On SIGTERM: ``drain()`` at once (``/readyz`` turns 503 while requests are still accepted and answered: a
    load balancer's time to stop routing here), then after ``seconds`` the handler that was there before, the
    server's graceful shutdown: it stops accepting, answers every request it holds, and exits. Called on the
    worker's event loop (the service's ``__init__``), whose thread is the main one, where signals are handled."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # not in a server (a test calling the service directly)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def shut_down(signum: int) -> None:
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, None)
        else:
            signal.raise_signal(signum)

    def on_sigterm(signum, frame) -> None:
        drain()
        loop.call_soon_threadsafe(loop.call_later, seconds, shut_down, signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def served_report(path: str | Path) -> dict | None:
    """The distillation report the served folder carries (``report.json``, written by ``compressor.distill``
    beside its model card and copied into the model store), else None."""
    report = Path(path) / REPORT_FILE
    return json.loads(report.read_text()) if report.is_file() else None


def load_classifier(settings: Settings, stored_path: str | None = None):
    """The classifier of COMPRESSOR_MODEL_DIR, else of the stored model, on this worker's share of cores."""
    from runtime import Classifier
    from runtime.backends import Threads

    path = settings.model_dir or stored_path
    if not path:
        raise ServiceConfigError("no model to serve: set COMPRESSOR_MODEL_DIR to an HF classification or "
                                 "runtime.export directory, or store one with `python -m bentos.store DIR`")
    return Classifier.load(path, backend=settings.backend, variant=settings.variant,
                           batch_size=settings.max_batch_size,
                           threads=Threads(intra_op=settings.threads, inter_op=1, spinning=False))


@bentoml.service(image=IMAGES[ARGS.device], workers=SETTINGS.workers, threads=1,
                 traffic={"timeout": SERVICE_TIMEOUT_S}, logging={"access": {"enabled": SETTINGS.access_log}},
                 **({"resources": {"gpu": 1}} if ARGS.device == "gpu" else {}))
class TextClassifier:
    """``POST /classify`` (batchable: the items of concurrent requests share model calls), ``POST
    /model_info``, and BentoML's /healthz, /readyz, /metrics and OpenAPI (/docs.json)."""

    if SETTINGS.model_dir is None:  # serve the stored model (packed into the Bento by `bentoml build`)
        model_ref = bentoml.models.BentoModel(ARGS.model)

    def __init__(self) -> None:
        stored = None if SETTINGS.model_dir else self.model_ref.path
        self.classifier = load_classifier(SETTINGS, stored)
        ClassifyInput.model_is_pair = self.classifier.is_pair
        self.info = {**self.classifier.info(), **SETTINGS.public(), "report": served_report(self.classifier.path)}
        drain_on_sigterm(SETTINGS.drain_s, DRAINING.set)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        metrics()  # this worker's metrics exist (at zero) before the first request
        # the model, tokenizer and libraries are loaded for good: take them out of the garbage collector's view,
        # or each full collection walks them all and stalls every request in flight (~200 ms seen here)
        gc.collect()
        gc.freeze()
        # the event loop (reading, validating, answering) and the model thread take turns holding the GIL; at
        # Python's default switch interval (5 ms) a thread that wants it back waits up to that long at every
        # turn, which on a busy worker added milliseconds to every model call (see GIL_SWITCH_S)
        sys.setswitchinterval(GIL_SWITCH_S)

    def __is_ready__(self) -> bool:
        """``/readyz``: 503 from the moment a SIGTERM arrives (see :func:`drain_on_sigterm`)."""
        return not DRAINING.is_set()

    @bentoml.api(input_spec=ClassifyInput, batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
    async def classify(self, items: list[Item]) -> list[Prediction]:
        """Labels with softmax scores (regression: the score), one per input, in order; ``truncated`` is true
        for inputs longer than the model's maximum length, which were cut to fit."""
        # In the worker's one model thread (ONNX Runtime and the tokenizer release the GIL): the event loop stays free
        # to read, refuse and answer while the model runs, so under overload the excess is refused in milliseconds
        # rather than after the model calls ahead of it; one thread keeps one model call at a time per worker.
        start = time.perf_counter()
        observed = metrics()
        for item in items:
            observed.batch_wait_seconds.observe(start - getattr(item, "validated", start))
        observed.batch_size.observe(len(items))
        answers = await asyncio.get_running_loop().run_in_executor(self.model_thread, classify_mixed,
                                                                   self.classifier, items)
        observed.model_seconds.observe(time.perf_counter() - start)
        return answers

    @bentoml.api(input_spec=NoInput)
    async def model_info(self) -> dict[str, Any]:
        """Labels, input kind, back end and providers really in use, model hash, maximum length, batching,
        workers and threads, and the distillation report the model came with (``null`` where it has none)."""
        return self.info


# BentoML finds a response's media type by building the output's JSON schema anew for every response (a fifth of
# the event loop's time per request, profiled with py-spy) unless the output spec names it, as BentoML itself does
# for streams
TextClassifier.apis["classify"].output_spec.media_type = "application/json"


class NoCorkOptimizer(Optimizer):
    """BentoML's batching optimizer with its cork taken out: the dispatcher starts a model call as soon as the
    model is free, with every request queued by then (the next batch forms while the model runs), as Triton's
    dynamic batcher does with no queue delay.

    BentoML's dispatcher otherwise holds a free model back while ``queued x (newest's wait + the model's time per
    item)`` is under the average wait of recent batches' first requests. Under load that average is the load's
    own queueing delay, so the hold it learns feeds itself and outlasts the load: measured on one core after
    16 closed-loop clients, one client's requests then took 27-36 ms at the median instead of 7, and open-loop
    traffic at 0.8x the closed-loop capacity was refused in part."""

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = 0


def shed():
    """What BentoML's batching dispatcher answers for a queued request it drops because it waited past its
    latency budget (under overload ``COMPRESSOR_QUEUE_BUDGET_MS``, see ``bentos/admission.py``; else
    ``COMPRESSOR_MAX_LATENCY_MS``): the contract's 503, returned as the request's response (raised, BentoML would
    log it as a server error and replace its message)."""
    from starlette.responses import JSONResponse

    metrics().refusals.labels("overload").inc()
    return JSONResponse({"error": "the server is overloaded: this request waited in its queue past the latency "
                                  "budget (COMPRESSOR_QUEUE_BUDGET_MS under overload, else COMPRESSOR_MAX_LATENCY_MS): "
                                  "retry after the Retry-After seconds"},
                        status_code=503, headers={"Retry-After": str(SETTINGS.retry_after_s)})


class AdmittedService(type(TextClassifier)):
    """The service whose ASGI app is wrapped, outermost, in admission control (``bentos/admission.py``).

    BentoML puts a service's own middleware inside its metrics, tracing, access-log and timeout middleware, so a
    request refused there has already paid for all of them: on 2 cores, under open-loop traffic at twice the
    capacity, refusing through that stack took the event loop's time from the requests it had accepted (their
    p99 rose to tens of times the unloaded one). Outermost, a refusal costs uvicorn's parsing and one small
    response, and the count includes the requests still in BentoML's stack. BentoML serves ``to_asgi()``'s app."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True):
        from _bentoml_impl.server.app import ServiceAppFactory

        self.inject_config()
        factory = ServiceAppFactory(self, is_main=is_main)  # what Service.to_asgi does, keeping the factory
        # the service's traffic timeout is enforced by the admission middleware instead (see bentos/admission.py)
        timeout_s, factory.timeout = factory.timeout or 0.0, None
        for dispatcher in factory.dispatchers.values():
            dispatcher.optimizer = NoCorkOptimizer(dispatcher.max_latency)
            dispatcher.fallback = shed
        budget_s = None if SETTINGS.queue_budget_ms is None else SETTINGS.queue_budget_ms / 1e3
        return AdmissionMiddleware(factory(), paths={"/classify"}, limit=SETTINGS.max_in_flight,
                                   retry_after_s=SETTINGS.retry_after_s, budget_s=budget_s, timeout_s=timeout_s,
                                   deep=SETTINGS.deep_queue, queues=factory.dispatchers.values())


TextClassifier.__class__ = AdmittedService

TextClassifier.add_asgi_middleware(ContractMiddleware, statuses={"/classify": {
    413: "a body larger than any valid request",
    422: "a text longer than COMPRESSOR_MAX_CHARS characters, texts sent to a pair model, or pairs to a "
         "single-text model",
    503: "the requests the server holds number COMPRESSOR_MAX_IN_FLIGHT already, or, under overload, would keep "
         "this one past COMPRESSOR_QUEUE_BUDGET_MS, or it waited in the queue past it: retry after the Retry-After "
         "seconds",
}}, body_required=["/classify"])
