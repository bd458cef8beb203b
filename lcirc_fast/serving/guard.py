"""ASGI middleware in front of every route: API key, body size, UTF-8 bodies, and the
request metrics (count per endpoint and status, latency)."""
from __future__ import annotations

import hmac
import json
import time

from .errors import error_body

OPEN_PATHS = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect")


async def send_error(send, status: int, message: str, type_: str, code: str, headers=()) -> None:
    """Answer with an OpenAI-style error object."""
    body = json.dumps(error_body(message, type_, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def endpoint_label(path: str) -> str:
    """The path with a document id replaced by {id} (bounded label values)."""
    if path.startswith("/v1/documents/"):
        return "/v1/documents/{id}"
    known = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/documents", "/health",
             "/metrics")
    return path if path in known else "other"


class Guard:
    """Refuses, before any route runs: a missing or wrong API key (401), a body over
    `max_body_bytes` (413), and a body that is not UTF-8 or not JSON (400)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), {"code": 500}
        label = endpoint_label(scope["path"])

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_and_note)
        finally:
            m = self.metrics
            m.requests.labels(label, str(status["code"])).inc()
            m.latency.labels(label).observe(time.perf_counter() - t0)

    async def _guarded(self, scope, receive, send):
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            self.metrics.errors.labels("invalid_api_key").inc()
            await send_error(send, 401, "missing or wrong API key: send 'Authorization: Bearer "
                             "<key>' with the server's --api-key", "authentication_error",
                             "invalid_api_key", [(b"www-authenticate", b"Bearer")])
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            self.metrics.errors.labels("invalid_encoding").inc()
            await send_error(send, 400, f"the request body is not UTF-8: byte 0x{body[e.start]:02x} "
                             f"at offset {e.start}; send UTF-8 JSON", "invalid_request_error",
                             "invalid_encoding")
            return
        try:
            json.loads(body)
        except ValueError as e:
            self.metrics.errors.labels("invalid_json").inc()
            await send_error(send, 400, f"the request body is not valid JSON: {e}",
                             "invalid_request_error", "invalid_json")
            return
        # Every body is JSON, whatever Content-Type the client sent.
        scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", [])
                                      if k.lower() != b"content-type"]
                 + [(b"content-type", b"application/json")]}
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authorized(self, headers: dict) -> bool:
        auth = headers.get("authorization", b"").decode("latin-1")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        return bool(key) and hmac.compare_digest(key.encode(), self.api_key.encode())

    async def _too_large(self, send) -> None:
        self.metrics.errors.labels("body_too_large").inc()
        await send_error(send, 413, f"the request body is larger than the server's limit of "
                         f"{self.max_body} bytes (--max-body-bytes)", "invalid_request_error",
                         "body_too_large")
