"""The question-free part of QD-LCIRC compression, computed once per document.

In h(i) = Perceiver(Mixer(h(i-1), query), s_i) only the latent recurrence depends on the query:
the segment inputs and every compressor layer's keys/values of the segment tokens do not.
`DocumentKV.build` computes those once; `DocumentKV.compress(query)` then runs only the latent
recurrence with the query and returns the memory a full `compress(ids, query_ids=query)` gives
(to float tolerance).
"""
from __future__ import annotations

import torch

from ..errors import DataError
from ..memory import CompressedMemory
from .checks import check_ids


class DocumentKV:
    """One document's token ids [1, N], its segment boundaries and, per segment, the
    compressor's K/V: a list over layers of (k, v), each [1, L, heads, head_dim] in the model's
    dtype (no autograd graph; views into one buffer of N x layers x 2 x heads x head_dim)."""

    def __init__(self, ids: torch.Tensor, bounds: list[int], kvs: list):
        self.ids, self.bounds, self.kvs = ids, bounds, kvs

    @classmethod
    @torch.no_grad()
    def build(cls, model, ids, segment_len: int | None = None) -> "DocumentKV":
        """Segment `ids` (int64 [N] or [1, N]) as `compress` would and compute each segment's
        compressor K/V (equal-length segments share one product)."""
        ids = check_ids(ids, "context_ids", model.device, model.config.vocab_size)
        if ids.shape[0] != 1:
            raise DataError(f"DocumentKV holds one document; got a batch of {ids.shape[0]}")
        bounds = model.recurrence.segment_plan(ids.shape[1], segment_len, None)
        comp = model.compressor
        folded = comp.folded_kv_weight()
        # one buffer for every segment's K/V; the products write into it and the cache keeps
        # views (no per-layer copies: half the peak memory of a product followed by copies)
        buf = torch.empty(ids.shape[1] * comp.kv_width, dtype=folded[0].dtype, device=ids.device)
        kvs: list = []
        first = 0
        while first < len(bounds) - 1:           # runs of equal-length segments
            length = bounds[first + 1] - bounds[first]
            last = first + 1
            while last < len(bounds) - 1 and bounds[last + 1] - bounds[last] == length:
                last += 1
            seg = ids[:, bounds[first]:bounds[last]].reshape(1, last - first, length)
            out = buf[bounds[first] * comp.kv_width:bounds[last] * comp.kv_width]
            kvs += comp.segments_kv(model.inputs(seg), folded, out=out)
            first = last
        return cls(ids, bounds, kvs)

    @property
    def nbytes(self) -> int:
        """Bytes held by the K/V tensors and the ids."""
        n = self.ids.numel() * self.ids.element_size()
        return n + sum(t.numel() * t.element_size() for step in self.kvs for kv in step for t in kv)

    @property
    def num_tokens(self) -> int:
        return self.ids.shape[1]

    @property
    def num_segments(self) -> int:
        return len(self.bounds) - 1

    @torch.no_grad()
    def compress(self, model, query_ids, query_mask=None) -> CompressedMemory:
        """The memory of this document for one query (int64 [Tq] or [1, Tq]): only the latent
        recurrence (mixer and compressor steps) runs."""
        return model.recurrence.compress(self.ids, boundaries=self.bounds, query_ids=query_ids,
                                         query_mask=query_mask, segment_kvs=self.kvs)
