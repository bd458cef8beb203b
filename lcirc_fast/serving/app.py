"""The OpenAI-compatible HTTP API of `lcirc serve` (FastAPI).

Endpoints: POST /v1/completions, POST /v1/chat/completions (both with `"stream": true` as
server-sent events ending in `data: [DONE]`), GET /v1/models, POST /v1/documents,
GET and DELETE /v1/documents/{id}, GET /health, GET /metrics (Prometheus text). A completion
reads a stored document's memory when its body has `"document": "<id>"`. Every error is an
OpenAI-style object {"error": {"message", "type", "code"}}.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .engine import Row
from .errors import RequestError, error_body
from .guard import Guard
from .schemas import ChatRequest, CompletionRequest, DocumentRequest


def create_app(engine, api_key: str | None = None, max_body_bytes: int = 8 << 20) -> FastAPI:
    """The API around `engine` (a `lcirc_fast.serving.Engine`)."""
    app = FastAPI(title="lcirc serve", version="1",
                  description="OpenAI-compatible completions over LCIRC-compressed documents")
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes,
                       metrics=engine.metrics)
    app.state.engine = engine
    _errors(app, engine)
    _routes(app, engine)
    return app


def _error(engine, status: int, message: str, type_: str, code: str) -> JSONResponse:
    engine.metrics.errors.labels(code).inc()
    return JSONResponse(error_body(message, type_, code), status_code=status)


def _errors(app: FastAPI, engine) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_req, e: RequestError):
        return _error(engine, e.status, e.message, e.type, e.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_req, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return _error(engine, 400, f"the request body is not valid JSON: {first.get('msg')}",
                          "invalid_request_error", "invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(engine, 400, f"invalid request: {where or 'body'}: {first.get('msg')}",
                      "invalid_request_error", "invalid_request")

    @app.exception_handler(HTTPException)
    async def http_error(_req, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(engine, e.status_code, str(e.detail), "invalid_request_error", code)

    @app.exception_handler(Exception)
    async def crash(_req, e: Exception):
        return _error(engine, 500, f"internal error: {type(e).__name__}: {e}", "server_error",
                      "internal_error")


def _routes(app: FastAPI, engine) -> None:
    name = engine.settings.model_name

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "query_dependent": engine.qd}

    @app.get("/metrics")
    async def metrics():
        engine.metrics.cache_bytes.set(engine.cache.nbytes)
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                            "owned_by": "lcirc_fast"}]}

    @app.post("/v1/documents")
    async def add_document(body: DocumentRequest):
        info, created = await run_in_threadpool(engine.add_document, body.text)
        return {**info, "created": created}

    @app.get("/v1/documents/{doc_id}")
    async def get_document(doc_id: str):
        return await run_in_threadpool(engine.document_info, doc_id)

    @app.delete("/v1/documents/{doc_id}")
    async def delete_document(doc_id: str):
        await run_in_threadpool(engine.delete_document, doc_id)
        return {"id": doc_id, "object": "document", "deleted": True}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _answer(engine, body, body.prompt, body.prompt, body.max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        messages = [m.model_dump() for m in body.messages]
        users = [m["content"] for m in messages if m["role"] == "user"]
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
            else body.max_tokens
        return await _answer(engine, body, engine.chat_prompt(messages),
                             users[-1] if users else messages[-1]["content"], max_tokens, chat=True)


class _Output:
    """Tokens of one row as they arrive, and the text decoded so far."""

    def __init__(self, engine):
        self.engine, self.ids, self.sent, self.reason = engine, [], "", None

    def delta(self, final: bool = False) -> str:
        text = self.engine.decode(self.ids)
        if (not final and text.endswith("\ufffd")) or not text.startswith(self.sent):
            return ""                           # an incomplete character: wait for more
        out, self.sent = text[len(self.sent):], text
        return out


async def _answer(engine, body, prompt: str, query: str, max_tokens, chat: bool):
    prompt_ids = engine.encode(prompt)
    engine.check_request(prompt_ids, max_tokens)
    if body.document is not None:
        await run_in_threadpool(engine.document_info, body.document)     # 404 before decoding
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def sink(kind, value):
        try:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))
        except RuntimeError:                    # the loop has closed
            pass

    query_ids = engine.encode(query) if engine.qd and body.document is not None else None
    row = Row(prompt_ids, max_tokens, sink, doc_id=body.document, query_ids=query_ids or None,
              temperature=body.temperature, top_p=body.top_p, seed=body.seed)
    engine.submit(row)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    base = {"id": rid, "created": created, "model": engine.settings.model_name}
    out = _Output(engine)

    def usage():
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": len(out.ids),
                "total_tokens": len(prompt_ids) + len(out.ids)}

    if body.stream:
        return StreamingResponse(_sse(events, out, base, usage, chat),
                                 media_type="text/event-stream")
    while True:
        kind, value = await events.get()
        if kind == "token":
            out.ids.append(value)
        elif kind == "error":
            raise value
        else:
            out.reason = value
            break
    text = engine.decode(out.ids)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": out.reason, "logprobs": None}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": usage()}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": out.reason}
    return {**base, "object": "text_completion", "choices": [choice], "usage": usage()}


async def _sse(events, out: _Output, base: dict, usage, chat: bool):
    """Server-sent events: one chunk per piece of text, a last chunk with the finish reason
    and usage, then `data: [DONE]`."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, reason: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else \
                ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        payload = {**base, "object": obj, "choices": [choice]}
        if reason is not None:
            payload["usage"] = usage()
        return f"data: {json.dumps(payload)}\n\n"

    if chat:
        yield chunk(None, None, first=True)
    while True:
        kind, value = await events.get()
        if kind == "token":
            out.ids.append(value)
            piece = out.delta()
            if piece:
                yield chunk(piece, None)
        elif kind == "error":
            err = value.body() if isinstance(value, RequestError) else \
                error_body(f"internal error: {type(value).__name__}: {value}", "server_error",
                           "internal_error")
            yield f"data: {json.dumps(err)}\n\n"
            break
        else:
            out.reason = value
            piece = out.delta(final=True)
            if piece:
                yield chunk(piece, None)
            yield chunk(None, value)
            break
    yield "data: [DONE]\n\n"
