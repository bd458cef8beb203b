"""The training objectives: the loss of one micro-step (one backward call).

Stage 1 (LM, with the copy documents of `data.copy_mix` mixed into the streams): each of the
`train.batch_size` document streams compresses its next segment into its running memory, and the
LM loss is taken on the window that follows. Stage 2 (QA): `train.batch_size` QA samples, their
middles compressed (query-dependent when the model is), the loss on the answer tokens. Either may
add the contrast hinge against the in-batch swapped memory (`train.contrast_weight`), and
`train.memory_grad_centering` removes the batch-mean gradient of the memory.
"""
from __future__ import annotations

import random

import torch
import torch.utils.checkpoint

from ..data.qa import prepare_training
from ..data.stage1 import Stage1Step, draw_boundaries
from ..memory import CompressedMemory
from ..modules.zero import whole
from .batching import RunParts
from .builders import bptt_policy, hay_at


class Objectives:
    """Micro-step losses over a run's parts; `streams` holds stage 1's per-stream memories."""

    def __init__(self, parts: RunParts):
        self.parts = parts
        self.streams: list = [None] * parts.cfg.train.batch_size

    def llm_loss(self, ids, labels, memory, mask=None) -> torch.Tensor:
        """The model's mean token loss (a 0-dim float tensor; `LCIRCForCausalLM.loss`: logits only
        from the first labelled position on), activation-checkpointed when asked."""
        model = self.parts.model

        def fn():
            return model.loss(ids, labels, memory=memory, attention_mask=mask)
        if self.parts.cfg.train.activation_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, use_reentrant=False)
        return fn()

    def touch(self, loss, used_memory: bool):
        """Keep every trainable parameter in the graph when no memory was used, and always under
        ZeRO-3, whose gradient reduction needs the same parameters from every rank."""
        if loss.requires_grad and used_memory and not self.parts.engine.grads_everywhere:
            return loss
        return loss + 0.0 * sum(whole(p)[0].sum() for p in self.parts.model.parameters() if p.requires_grad)

    def objective(self, ids, mask, labels, memory) -> tuple[torch.Tensor, dict]:
        """The LM / answer loss with `memory`, plus the contrast term (train.contrast_weight)
        against the in-batch swapped memory; `memory_grad_centering` removes the batch-mean
        gradient of the memory. Returns (loss, extra per-step log values)."""
        t = self.parts.cfg.train
        if memory is not None and t.memory_grad_centering and torch.is_grad_enabled():
            h = memory.hidden
            if h.requires_grad:
                h.register_hook(lambda g: g - g.mean(0, keepdim=True))
        loss = self.llm_loss(ids, labels, memory, mask)
        extra = {}
        if memory is not None and t.contrast_weight > 0 and ids.shape[0] > 1:
            swapped = self.llm_loss(ids, labels, self.parts.rolled(memory), mask)
            extra = {"loss_own": float(loss.detach()), "loss_swapped": float(swapped.detach())}
            loss = loss + t.contrast_weight * torch.relu(t.contrast_margin - (swapped - loss))
        return loss, extra

    def stage1(self, steps) -> tuple[torch.Tensor, int, dict]:
        """One backward's loss over one step of each document stream (`steps`: a Stage1Step per
        stream); returns (loss, tokens read, extra log values)."""
        p = self.parts
        if isinstance(steps, Stage1Step):
            steps = [steps]
        if len(self.streams) != len(steps):
            self.streams = [None] * len(steps)
        policy = bptt_policy(p.cfg.train.bptt)
        ntok = 0
        for i, step in enumerate(steps):
            seg = step.segment.to(p.device)[None]
            if step.step == 0 or self.streams[i] is None:
                self.streams[i] = p.model.compress(seg, boundaries=[0, seg.shape[1]], bptt=policy)
            else:
                self.streams[i].append(p.model, seg, bptt=policy)
            ntok += step.window.numel() + seg.numel()
        memory = self.streams[0] if len(steps) == 1 else CompressedMemory.stack(self.streams)
        ids, mask, labels = p.pad([s.window for s in steps])
        loss, extra = self.objective(ids, mask, labels, memory)
        return self.touch(loss, True), ntok, extra

    def detach_streams(self) -> None:
        """Cut the stage-1 memories' graphs after a backward (truncation across micro-steps)."""
        for m in self.streams:
            if m is not None:
                m.detach_()

    def qa_items(self, micro: int, opt_step: int) -> list:
        """The train.batch_size QA samples of micro-step `micro` (the hay schedule read at
        `opt_step`): (seed, sample, head/tail, labels) each."""
        p = self.parts
        cfg, b = p.cfg, p.cfg.train.batch_size
        n_ctx = hay_at(cfg.data.hay_schedule, opt_step)
        items = []
        for i in range(b):
            seed = (cfg.seed * 1_000_003 + p.engine.rank * 7919 + micro * b + i) % (2**63)
            sample = p.data.qa_train(random.Random(seed), n_ctx)
            ht, labels = prepare_training(sample, cfg.data.window)
            items.append((seed, sample, ht, labels))
        return items

    def stage2(self, micro: int, opt_step: int) -> tuple[torch.Tensor, int, dict]:
        """One backward's answer loss over micro-step `micro`'s QA samples: the token mean over
        the samples cut to head + tail (memory of their middles) and those that fit whole."""
        p = self.parts
        cfg, d = p.cfg, p.cfg.data
        qd = p.model.config.query_dependent
        items = self.qa_items(micro, opt_step)
        parts, extra = [], {}
        for group in ([it for it in items if it[2].truncated], [it for it in items if not it[2].truncated]):
            if not group:
                continue
            memory = None
            if group[0][2].truncated:
                bounds, policies = [], []
                for seed, _, ht, _ in group:
                    g = torch.Generator().manual_seed(seed)
                    bounds.append(draw_boundaries(ht.middle.numel(), d.segmenting, g, p.segment_len,
                                                  d.segment_min, d.segment_max))
                    policies.append(bptt_policy(cfg.train.bptt, g))
                memory = p.compress_batch([it[2].middle for it in group],
                                          [it[1].query_ids if qd else None for it in group],
                                          bounds, policies)
            ids, mask, labels = p.pad([it[2].llm_ids for it in group], [it[3] for it in group])
            loss, more = self.objective(ids, mask, labels, memory)
            extra.update(more)
            parts.append((loss, int((labels[:, 1:] != -100).sum()), memory is not None))
        if len(parts) == 1:
            loss = parts[0][0]
        else:   # the mean over every answer token of the batch
            loss = sum(part * n for part, n, _ in parts) / max(1, sum(n for _, n, _ in parts))
        ntok = sum(it[1].input_ids.numel() for it in items)
        return self.touch(loss, all(m for _, _, m in parts)), ntok, extra
