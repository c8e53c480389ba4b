"""The HTTP contract BentoML 1.4 does not keep by itself: every error body is ``{"error": "<one line>"}`` and
the OpenAPI document (/docs.json) lists every status the service answers with.

BentoML writes error bodies in three shapes: ``{"error", "detail": [pydantic errors]}`` for a validation
error, ``[{"error": ...}]`` (a one-item list, BentoML's own shape) for any other 4xx ``BentoMLException``,
and plain text for routing errors (405), while its published schema says ``{"error": string, "detail":
string}`` and lists 400, 404 and 500 only. :class:`ContractMiddleware` rewrites error bodies into the one
shape (2xx responses pass untouched, so the cost is one comparison per response) and adds this service's
statuses to /docs.json, all pointing at one ``Error`` schema.
"""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Collection, Mapping

from bentoml.exceptions import BentoMLException

OPENAPI_PATH = "/docs.json"
ERROR_SCHEMA = {
    "type": "object", "title": "Error", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {"type": "string", "title": "Message",
                             "description": "what was wrong and how to fix it, on one line"}},
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}


class RequestRejected(BentoMLException):
    """A client error with its own status; the middleware turns it into ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message, error_code=HTTPStatus(status))


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def error_message(body: bytes, status: int) -> str:
    """The one-line message in any of BentoML's error body shapes."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = body.decode("utf-8", "replace")
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        detail = data.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # pydantic errors
            first = detail[0]
            where = ".".join(str(p) for p in first.get("loc") or ())
            data = f"{where}: {first.get('msg')}" if where else first.get("msg")
        else:
            data = data.get("error") or detail
    return one_line(data or "") or HTTPStatus(status).phrase


def openapi_with_errors(spec: dict, statuses: Mapping[str, Mapping[int, str]],
                        body_required: Collection[str] = ()) -> dict:
    """``spec`` with the ``Error`` schema, each operation's error statuses pointing at it, the statuses in
    ``statuses`` (route -> {status: description}) added to those routes' POST operations, and the request
    body marked required on the routes in ``body_required`` (BentoML leaves it optional)."""
    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for route, item in spec.get("paths", {}).items():
        for operation in item.values():
            responses = operation.get("responses") if isinstance(operation, dict) else None
            if responses is None:
                continue
            for code, response in responses.items():
                if int(code) >= 400:
                    response["content"] = {"application/json": {"schema": ERROR_REF}}
            if "requestBody" not in operation:
                continue
            for code, description in statuses.get(route, {}).items():
                responses[str(code)] = {"description": description,
                                        "content": {"application/json": {"schema": ERROR_REF}}}
            if route in body_required:
                operation["requestBody"]["required"] = True
    return spec


class ContractMiddleware:
    """Pure ASGI middleware (``Service.add_asgi_middleware``): one-line JSON error bodies, complete OpenAPI."""

    def __init__(self, app, statuses: Mapping[str, Mapping[int, str]], body_required: Collection[str] = ()):
        self.app = app
        self.statuses = statuses
        self.body_required = body_required

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_openapi = scope["path"] == OPENAPI_PATH
        held: dict = {}
        chunks: list[bytes] = []

        async def send_through(message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] >= 400 or (is_openapi and message["status"] == 200):
                    held.update(message)
                    return
            elif message["type"] == "http.response.body" and held:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                await self._send_rewritten(send, held, b"".join(chunks), is_openapi)
                return
            await send(message)

        await self.app(scope, receive, send_through)

    async def _send_rewritten(self, send, start: dict, body: bytes, is_openapi: bool) -> None:
        status = start["status"]
        if status < 400:  # the OpenAPI document
            payload = openapi_with_errors(json.loads(body), self.statuses, self.body_required)
        else:
            payload = {"error": error_message(body, status)}
        content = json.dumps(payload).encode()
        headers = [(k, v) for k, v in start.get("headers", [])
                   if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": content})
