"""The serving engine: documents compressed once, questions answered in batches.

An LCIRC document's memory K/V (every GCA layer, [1, M, H, Dh]) is projected once and kept in an
LRU cache bounded in bytes; a QD-LCIRC document keeps its question-free compression
(`DocumentKV`) there instead, so each question runs only the latent recurrence. Rows of a batch
with different documents read their memories padded to the longest and masked by length.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models.decode_linears import use_few_row_linears
from ..models.segment_kv_cache import DocumentKV
from .batcher import Batcher
from .errors import RequestError
from .lru import ByteLRU
from .metrics import Metrics
from .store import DocumentStore, document_id, is_document_id


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text of a chat: the tokenizer's chat template, or 'role: content' lines."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines + ["assistant:"])


@dataclass
class EngineSettings:
    """max_batch: rows decoded together; cache_bytes: bound of the memory cache;
    max_tokens_limit: the largest `max_tokens` a request may ask; model_name: the id that
    /v1/models lists; batch_wait_s: how long a batch waits after its first row for more;
    few_row_linears: run the decoding steps' products through `use_few_row_linears`;
    threads: torch threads of the engine's one torch thread (None: the creating thread's count).
    torch keeps one default for threads it has not seen yet, so threads started after the
    engine's begin at this count too (a thread that has run torch keeps its own)."""
    max_batch: int = 8
    cache_bytes: int = 1 << 30
    max_tokens_limit: int = 1024
    model_name: str = "lcirc"
    batch_wait_s: float = 0.01
    few_row_linears: bool = True
    threads: int | None = None


@dataclass
class Row:
    """One request for the decoder. `sink(kind, value)` is called from the decoding thread with
    ("token", id), then ("done", "stop" | "length") or ("error", exception)."""
    prompt_ids: list[int]
    max_tokens: int
    sink: Callable[[str, object], None]
    doc_id: str | None = None
    query_ids: list[int] | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    extra: dict = field(default_factory=dict)

    def batch_key(self) -> tuple:
        """Rows with equal keys can share a batch (a seeded row decodes alone)."""
        if self.seed is not None:
            return ("seeded", id(self))
        return (self.doc_id is not None, self.temperature, self.top_p)


class Engine:
    """Model, tokenizer, document store, memory cache and batcher of one server."""

    def __init__(self, model, tokenizer, store_dir: str, settings: EngineSettings | None = None):
        self.model, self.tok = model.eval(), tokenizer
        self.settings = settings or EngineSettings()
        self.metrics = Metrics()
        self.qd = model.mixer is not None
        self.window = int(getattr(model.base.config, "max_position_embeddings", 2048))
        self.fingerprint = model.fingerprint()
        if self.settings.few_row_linears:
            use_few_row_linears(model)
        self.store = DocumentStore(store_dir, self.fingerprint)
        self.cache = ByteLRU(self.settings.cache_bytes)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos or 0)
        self._doc_lock = threading.Lock()
        self._info: dict[str, dict] = {}
        self.batcher = Batcher(self, self.settings.max_batch, self.settings.batch_wait_s,
                               threads=self.settings.threads or torch.get_num_threads())

    def close(self) -> None:
        self.batcher.close()

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict]) -> str:
        return chat_prompt(self.tok, messages)

    def check_request(self, prompt_ids: list[int], max_tokens) -> None:
        """RequestError for an empty prompt, a bad `max_tokens` or a prompt too long for the
        window."""
        limit = self.settings.max_tokens_limit
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) \
                or not 1 <= max_tokens <= limit:
            raise RequestError(400, "invalid_max_tokens",
                               f"max_tokens must be an integer in [1, {limit}], got {max_tokens!r}")
        if not prompt_ids:
            raise RequestError(400, "empty_prompt", "the prompt is empty; send some text")
        if len(prompt_ids) + max_tokens > self.window:
            raise RequestError(400, "context_length_exceeded",
                               f"the prompt has {len(prompt_ids)} tokens and max_tokens is "
                               f"{max_tokens}, more than the model's window of {self.window} "
                               f"tokens; shorten the prompt, lower max_tokens, or store the long "
                               f"text as a document")

    # ------------------------------------------------------------------ documents
    def add_document(self, text: str) -> tuple[dict, bool]:
        """(metadata, created): compress `text` once; the same text again is not compressed.
        Runs on the engine's torch thread (between decoding batches)."""
        return self.batcher.call(lambda: self._add_document(text))

    def call(self, fn):
        """Run `fn()` on the engine's torch thread and return its result (for callers that run
        torch work beside a live engine, such as benchmarks)."""
        return self.batcher.call(fn)

    def _add_document(self, text: str) -> tuple[dict, bool]:
        if not text.strip():
            raise RequestError(400, "empty_document", "the document text is empty")
        doc_id = document_id(text, self.fingerprint)
        with self._doc_lock:
            info = self.document_info(doc_id, missing_ok=True)
            if info is not None:
                return info, False
            ids = torch.tensor([self.encode(text)], dtype=torch.long, device=self.model.device)
            with torch.no_grad():
                if self.qd:
                    doc = DocumentKV.build(self.model, ids)
                    self.store.put_tokens(doc_id, ids)
                    self.cache.put(doc_id, doc, doc.nbytes)
                    info = self._remember(doc_id, doc.num_tokens, doc.num_segments)
                else:
                    memory = self.model.compress(ids)
                    self.store.put_memory(doc_id, memory)
                    self._cache_memory(doc_id, memory)
                    info = self._remember(doc_id, ids.shape[1], memory.num_segments)
            self.metrics.compressed.inc()
            return info, True

    def _remember(self, doc_id: str, tokens: int, segments: int) -> dict:
        info = {"id": doc_id, "object": "document", "tokens": int(tokens),
                "segments": int(segments)}
        self._info[doc_id] = info
        return info

    def document_info(self, doc_id: str, missing_ok: bool = False) -> dict | None:
        """Metadata of a stored document; RequestError 404 (or None with `missing_ok`)."""
        info = self._info.get(doc_id)
        if info is not None and self.store.exists(doc_id):
            return info
        self._info.pop(doc_id, None)
        entry = self.batcher.call(lambda: self._load(doc_id)) if self.store.exists(doc_id) else None
        if entry is None:
            if missing_ok:
                return None
            raise RequestError(404, "document_not_found",
                               f"no document {doc_id!r}; store it first with POST /v1/documents")
        return self._info[doc_id]

    def delete_document(self, doc_id: str) -> None:
        with self._doc_lock:
            self.cache.pop(doc_id)
            self._info.pop(doc_id, None)
            if not self.store.delete(doc_id):
                raise RequestError(404, "document_not_found", f"no document {doc_id!r}")

    def _load(self, doc_id: str):
        """Read a stored document into the cache; None when it is absent or invalid."""
        if self.qd:
            ids = self.store.get_tokens(doc_id, self.model.config.vocab_size)
            if ids is None:
                return None
            doc = DocumentKV.build(self.model, ids.to(self.model.device))
            self.cache.put(doc_id, doc, doc.nbytes)
            self._remember(doc_id, doc.num_tokens, doc.num_segments)
            return doc
        memory = self.store.get_memory(doc_id, self.model)
        if memory is None:
            return None
        self._remember(doc_id, int(memory.context_tokens[0]), memory.num_segments)
        return self._cache_memory(doc_id, memory)

    def _cache_memory(self, doc_id: str, memory) -> tuple[dict, int]:
        kv = self.model.memory_kv(memory, use_cache=False)
        entry = (kv, len(memory))
        nbytes = sum(t.numel() * t.element_size() for k, v in kv.values() for t in (k, v))
        self.cache.put(doc_id, entry, nbytes)
        self.metrics.cache_bytes.set(self.cache.nbytes)
        return entry

    def cached(self, doc_id: str):
        """The cache entry of a document (read from the store on a miss)."""
        entry = self.cache.get(doc_id)
        if entry is not None:
            self.metrics.cache_hits.inc()
            return entry
        self.metrics.cache_misses.inc()
        if not is_document_id(doc_id):
            raise RequestError(404, "document_not_found", f"no document {doc_id!r}")
        entry = self._load(doc_id)
        if entry is None:
            raise RequestError(404, "document_not_found",
                               f"no document {doc_id!r}; store it first with POST /v1/documents")
        self.metrics.cache_bytes.set(self.cache.nbytes)
        return entry

    # ------------------------------------------------------------------ memories of a batch
    def row_memory(self, row: Row) -> tuple[dict, int]:
        """({layer: (k, v)} [1, M, H, Dh], M) for a row that reads a document."""
        entry = self.cached(row.doc_id)
        if not self.qd:
            return entry
        q = torch.tensor([row.query_ids or row.prompt_ids[-1:]], dtype=torch.long,
                         device=self.model.device)
        memory = entry.compress(self.model, q)
        return self.model.memory_kv(memory, use_cache=False), len(memory)

    def batch_memory(self, rows: list[Row]) -> tuple[dict, torch.Tensor | None] | None:
        """The rows' memories stacked: ({layer: (k, v)} [B, M_max, H, Dh], lengths int64 [B] or
        None when all are equally long), or [1, M, H, Dh] when every row reads the same LCIRC
        memory; None when the rows read no document."""
        if rows[0].doc_id is None:
            return None
        if len(rows) == 1 or (not self.qd and len({r.doc_id for r in rows}) == 1):
            # one memory for every row: kept [1, M, H, Dh] (no copy); the GCA blocks read it once
            return self.row_memory(rows[0])[0], None
        parts = [self.row_memory(r) for r in rows]
        longest = max(m for _, m in parts)
        kv = {}
        for name in parts[0][0]:
            ks, vs = [], []
            for part, m in parts:
                k, v = part[name]
                pad = (0, 0, 0, 0, 0, longest - m)
                ks.append(torch.nn.functional.pad(k, pad))
                vs.append(torch.nn.functional.pad(v, pad))
            kv[name] = (torch.cat(ks), torch.cat(vs))
        lengths = None
        if any(m != longest for _, m in parts):
            lengths = torch.tensor([m for _, m in parts], dtype=torch.long,
                                   device=self.model.device)
        return kv, lengths

    def submit(self, row: Row) -> None:
        """Queue a row for the batcher (results go to `row.sink`)."""
        self.batcher.submit(row)
