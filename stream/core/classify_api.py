"""``POST /v1/classify``: the decisions of the synchronous API, without the web server.

request bytes -> **parse and check the limits** (a 4xx with a JSON body, or the texts) -> the
worker scores the texts with its next take (the same scorer thread and model as the stream) ->
**each event payload as an API result**. The per-client **token bucket** takes its clock as an
argument. The OpenAPI document the worker serves at ``/v1/openapi.json`` is built here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# The event fields an API result carries (the event schema, without ids, sources and the text).
RESULT_FIELDS = (
    "label", "score", "probabilities", "model_name", "model_version", "inference_time_ms",
    "text_length", "token_count", "truncated", "uncertain", "lang_detected", "out_of_scope",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ApiLimits:
    max_texts: int = 64  # texts per request
    max_text_bytes: int = 64 * 1024  # UTF-8 bytes per text (the worker's message limit)
    max_request_bytes: int = 1024 * 1024  # the request body
    rate_per_s: float = 20.0  # requests per second per client, sustained
    burst: int = 40  # requests a client may send at once

    @property
    def max_text_chars(self) -> int:
        """The per-text limit in characters (the schema's maxLength): a quarter of the byte
        limit, so every text within it is within the byte limit too (UTF-8 is at most 4 bytes a
        character) and the schema's answer and the server's always agree."""
        return max(1, self.max_text_bytes // 4)


@dataclass(frozen=True, slots=True)
class ApiError:
    status: int
    code: str  # machine-readable: invalid_json, too_many_texts, ...
    message: str  # one line, never quotes a text

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def parse_classify_request(body: bytes, limits: ApiLimits) -> list[str] | ApiError:
    """``{"text": "..."}`` or ``{"texts": ["...", ...]}`` -> the texts, or what is wrong."""
    if len(body) > limits.max_request_bytes:
        return ApiError(413, "request_too_large",
                        f"the request body is {len(body)} bytes; the limit is "
                        f"{limits.max_request_bytes}")  # fmt: skip
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ApiError(400, "invalid_json", "the request body is not JSON")
    if not isinstance(document, dict):
        return ApiError(400, "invalid_request", 'the body must be an object: {"text": ...} or '
                        '{"texts": [...]}')  # fmt: skip
    unknown = sorted(set(document) - {"text", "texts"})
    if unknown or ("text" in document) == ("texts" in document):
        return ApiError(400, "invalid_request", 'give exactly one of "text" (a string) or '
                        '"texts" (a list of strings)' + (f"; unknown fields: {', '.join(unknown)}"
                                                          if unknown else ""))  # fmt: skip
    texts = [document["text"]] if "text" in document else document["texts"]
    if not isinstance(texts, list):
        return ApiError(400, "invalid_request", '"texts" must be a list of strings')
    if not texts:
        return ApiError(400, "invalid_request", '"texts" is empty')
    if len(texts) > limits.max_texts:
        return ApiError(400, "too_many_texts",
                        f"{len(texts)} texts; at most {limits.max_texts} per request")  # fmt: skip
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            return ApiError(400, "invalid_text", f"text {index} is not a string")
        if not text.strip():
            return ApiError(400, "empty_text", f"text {index} is empty")
        if len(text) > limits.max_text_chars:
            limit = limits.max_text_chars
            return ApiError(400, "text_too_long", f"text {index} has {len(text)} characters; "
                            f"at most {limit}")  # fmt: skip
    return texts


def api_result(event_payload: Mapping[str, Any]) -> dict[str, Any]:
    return {name: event_payload[name] for name in RESULT_FIELDS if name in event_payload}


class TokenBucket:
    """Per-client rate limit: each client holds up to ``burst`` tokens, refilled at ``rate_per_s``;
    a request takes one. Clients idle long enough to be full again are forgotten."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 100_000) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._clients: dict[str, tuple[float, float]] = {}  # client -> (tokens, at seconds)

    def take(self, client: str, now_s: float) -> float:
        """0.0 when the request may go; else the seconds until a token is there (Retry-After)."""
        tokens, at = self._clients.get(client, (float(self.burst), now_s))
        tokens = min(float(self.burst), tokens + (now_s - at) * self.rate)
        if tokens >= 1.0:
            self._clients[client] = (tokens - 1.0, now_s)
            if len(self._clients) > self.max_clients:
                self._forget_full(now_s)
            return 0.0
        self._clients[client] = (tokens, now_s)
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now_s: float) -> None:
        full_after = self.burst / self.rate
        for client, (_tokens, at) in list(self._clients.items()):
            if now_s - at >= full_after:
                del self._clients[client]


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


def openapi_document(limits: ApiLimits) -> dict[str, Any]:
    """The API's OpenAPI 3.0 description (served at /v1/openapi.json, fuzzed in CI)."""
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }},
    }  # fmt: skip
    result = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["POSITIVE", "NEGATIVE", "NEUTRAL"]},
            "score": {"type": "number"},
            "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "inference_time_ms": {"type": "number"},
            "text_length": {"type": "integer"},
            "token_count": {"type": "integer"},
            "truncated": {"type": "boolean"},
            "uncertain": {"type": "boolean"},
            "lang_detected": {"type": "string", "nullable": True},
            "out_of_scope": {"type": "boolean"},
            "error": error["properties"]["error"],  # type: ignore[index]
        },
    }
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_text_chars,
            "pattern": r"\S"}  # fmt: skip
    request = {
        "oneOf": [
            {"type": "object", "required": ["text"], "additionalProperties": False,
             "properties": {"text": text}},
            {"type": "object", "required": ["texts"], "additionalProperties": False,
             "properties": {"texts": {"type": "array", "items": text, "minItems": 1,
                                      "maxItems": limits.max_texts}}},
        ]
    }  # fmt: skip

    def error_response(description: str) -> dict[str, Any]:
        return {"description": description,
                "content": {"application/json": {"schema": error}}}  # fmt: skip

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "sentistream classify API",
            "version": "1",
            "description": "Score texts with the worker's own model: each text joins the "
            "worker's next batch (the same scorer as the stream; nothing is published).",
        },
        "paths": {
            "/v1/classify": {
                "post": {
                    "operationId": "classify",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": request}},
                    },
                    "responses": {
                        "200": {
                            "description": "one result per text, in order (a text the pipeline "
                            "rejected, e.g. empty after cleaning, has an error instead)",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["results"],
                                        "properties": {
                                            "results": {"type": "array", "items": result}
                                        },
                                    }
                                }
                            },
                        },
                        "400": error_response(
                            "the request is not valid JSON of the schema "
                            "(too many texts, a text too long or blank)"
                        ),
                        "413": error_response("the request body is over the byte limit"),
                        "415": error_response("the body is not application/json"),
                        "429": {
                            **error_response("rate limited: retry after Retry-After seconds"),
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                        },
                        "503": error_response("the worker could not score in time"),
                    },
                }
            }
        },
    }
