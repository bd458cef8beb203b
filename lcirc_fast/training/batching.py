"""What the objectives and validation share: the parts of a run, and how samples become batches.

Samples are 1-D long token tensors; a batch is right-padded on the run's device, and a stage-2
batch's memories are compressed together where their segment boundaries agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.collate import pad_batch
from ..memory import CompressedMemory
from .builders import DataBundle


@dataclass
class RunParts:
    """The built pieces of one run that the objectives and validation read."""

    cfg: object                  # TrainConfig (read live: tests may change train.batch_size)
    model: object                # LCIRCForCausalLM (the engine's module)
    engine: object               # PlainEngine or DeepSpeedEngine
    data: DataBundle
    tok: object                  # tokenizer, or None (synthetic tokens)
    device: torch.device
    pad_id: int
    segment_len: int             # the model's resolved segment length

    def pad(self, seqs: list, labels: list | None = None):
        """(ids, attention_mask or None, labels) on the device, each long [B, T]: stacked when
        every sequence has the same length, else right-padded (mask 0, label -100 on the padding);
        labels default to the ids."""
        if all(x.numel() == seqs[0].numel() for x in seqs):
            ids = torch.stack(seqs).to(self.device)
            return ids, None, ids if labels is None else torch.stack(labels).to(self.device)
        ids, mask, lab = pad_batch(seqs, self.pad_id, labels)
        return ids.to(self.device), mask.to(self.device), lab.to(self.device)

    def rows(self, memory: CompressedMemory, index) -> CompressedMemory:
        """A read-only memory whose row i is row index[i] of `memory` (autograd graph kept)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=memory.device)
        return CompressedMemory([], None, memory.num_segments,
                                memory.context_tokens[idx.to(memory.context_tokens.device)],
                                cap=None, lengths=memory.lengths[idx], hidden=memory.hidden[idx],
                                owner=self.model)

    def rolled(self, memory: CompressedMemory) -> CompressedMemory:
        """Row i reads row i - 1's memory: another sample's memory, the swapped control."""
        return self.rows(memory, torch.arange(memory.batch_size).roll(1))

    def compress_batch(self, middles: list, queries: list, bounds: list,
                       policies: list | None = None) -> CompressedMemory:
        """One memory row per middle (in order). Middles with the same boundaries (and query
        length) are compressed together as one [b, N] batch; the rest are stacked (padded)."""
        keyed: dict = {}
        for i, (q, b) in enumerate(zip(queries, bounds)):
            keyed.setdefault((tuple(b), None if q is None else q.numel()), []).append(i)
        mems, order = [], []
        for (b, qlen), idx in keyed.items():
            ids = torch.stack([middles[i] for i in idx]).to(self.device)
            q = None if qlen is None else torch.stack([queries[i] for i in idx]).to(self.device)
            mems.append(self.model.compress(ids, boundaries=list(b), query_ids=q,
                                            bptt=None if policies is None else policies[idx[0]]))
            order += idx
        if len(mems) == 1:
            return mems[0]
        where = {i: k for k, i in enumerate(order)}
        return self.rows(CompressedMemory.stack(mems), [where[i] for i in range(len(order))])
