"""Right-padding collation of variable-length token sequences."""
from __future__ import annotations

from typing import Sequence

import torch


def pad_batch(seqs: Sequence[torch.Tensor], pad_id: int, labels: Sequence[torch.Tensor] | None = None):
    """Stack 1-D int64 sequences into [B, T_max].

    Returns (input_ids, attention_mask, labels): padding gets `pad_id`, mask 0 and label -100.
    Without `labels`, labels = input_ids with padding masked (language modelling).
    """
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    if any(s.dim() != 1 or s.numel() == 0 for s in seqs):
        raise ValueError("every sequence must be a non-empty 1-D tensor")
    if labels is not None and [y.shape for y in labels] != [s.shape for s in seqs]:
        raise ValueError("labels must match the sequences' shapes")
    t = max(s.numel() for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    lab = torch.full((len(seqs), t), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = s.numel()
        ids[i, :n] = s
        mask[i, :n] = 1
        lab[i, :n] = s if labels is None else labels[i]
    return ids, mask, lab
