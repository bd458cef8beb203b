"""Validation of a run's current weights.

Stage 1: the NLL of each validation document's last window with the memory of the rest, without
memory, and with another document's prefix compressed instead (the swapped control). Stage 2:
every QA validation sample teacher-forced with its own memory, another sample's memory and none.
Sums are reduced over the ranks; metrics are plain floats (a JSON-able dict).
"""
from __future__ import annotations

import math

import torch

from ..data.qa import prepare_training
from ..eval.perplexity import window_nll
from ..segmenting import balanced_boundaries
from .batching import RunParts


class Validator:
    """Validation over a run's parts; `tok` (the parts' tokenizer) decodes pass-key digits."""

    def __init__(self, parts: RunParts):
        self.parts = parts
        self.tok = parts.tok

    @torch.no_grad()
    def validate(self) -> dict:
        """The validation metrics of the current weights (every rank takes part; the model is
        left in train mode)."""
        p = self.parts
        cfg, d = p.cfg, p.cfg.data
        p.model.eval()
        nll = torch.zeros(4, dtype=torch.float64)
        if cfg.stage == 1:
            for i, doc in enumerate(p.data.val_docs):
                if i % p.engine.world != p.engine.rank:
                    continue
                a, n = window_nll(p.model, doc, d.window, "lcirc", segment_len=p.segment_len)
                b, _ = window_nll(p.model, doc, d.window, "base", segment_len=p.segment_len)
                c = float("nan")
                docs = p.data.val_docs
                other = docs[(i + 1) % len(docs)]
                if len(docs) > 1 and doc.numel() > d.window and other.numel() >= doc.numel():
                    # control: the same window with another document's prefix compressed
                    swapped = torch.cat([other[:doc.numel() - d.window], doc[-d.window:]])
                    c, _ = window_nll(p.model, swapped, d.window, "lcirc", segment_len=p.segment_len)
                nll += torch.tensor([a, n, b, c], dtype=torch.float64)
        else:
            return self._validate_qa()
        if p.engine.world > 1:
            nll = torch.tensor([p.engine.all_reduce_mean(float(x)) * p.engine.world for x in nll])
        p.model.train()
        tokens = max(1.0, float(nll[1]))
        out = {"val_loss": float(nll[0]) / tokens, "val_loss_no_memory": float(nll[2]) / tokens,
               "val_tokens": int(nll[1])}
        if math.isfinite(float(nll[3])):
            # the gap to val_loss is what the memory's content (not its presence) is worth
            out["val_loss_swapped_memory"] = float(nll[3]) / tokens
        return out

    # per validation sample and memory (own, swapped, none): answer NLL sum, answer tokens,
    # arg-max hits, whole answer right, samples, then pass-key digit hits and counts by position
    _DIGITS = 5
    _WIDTH = 5 + 2 * _DIGITS

    @torch.no_grad()
    def score_rows(self, ids, mask, labels, memory, tasks) -> torch.Tensor:
        """Teacher-forced answer scores of each row: float64 [B, _WIDTH]. Pass-key digits are the
        answer tokens that decode to one digit (needs a tokenizer)."""
        logits, gold = self.parts.model.answer_logits(ids, labels, memory, mask)
        valid = gold != -100
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), gold.clamp(min=0), reduction="none")
        hit = (logits.argmax(-1) == gold) & valid
        out = torch.zeros(ids.shape[0], self._WIDTH, dtype=torch.float64)
        out[:, 0] = (nll * valid).sum(1).double().cpu()
        out[:, 1] = valid.sum(1).double().cpu()
        out[:, 2] = hit.sum(1).double().cpu()
        out[:, 3] = (hit | ~valid).all(1).double().cpu()
        out[:, 4] = 1.0
        if self.tok is None:
            return out
        for r, task in enumerate(tasks):
            if task != "passkey":
                continue
            pos = valid[r].nonzero().flatten().tolist()
            digits = [p for p in pos if self.tok.decode([int(gold[r, p])]).strip().isdigit()]
            for k, p in enumerate(digits[:self._DIGITS]):
                out[r, 5 + k] = float(hit[r, p])
                out[r, 5 + self._DIGITS + k] = 1.0
        return out

    @torch.no_grad()
    def _validate_qa(self) -> dict:
        """Stage-2 validation, teacher-forced, in batches of train.batch_size: every sample with
        its own memory, with the memory of the previous sample of the same context length (the
        swapped control) and without memory; answer NLL, token accuracy, exact answers and, for
        pass keys, digit accuracy overall and per key position. Per length under `by_length`
        and per task under `by_task` when there are several."""
        p = self.parts
        d = p.cfg.data
        samples = p.data.qa_val
        labels_of = p.data.qa_val_lengths or ["all"] * len(samples)
        by_len: dict = {}
        for i, name in enumerate(labels_of):
            by_len.setdefault(name, []).append(i)
        partner = {}
        for idx in by_len.values():
            for k, i in enumerate(idx):
                partner[i] = idx[k - 1] if len(idx) > 1 else i
        acc = torch.zeros(len(by_len), 3, self._WIDTH, dtype=torch.float64)   # length, own/swapped/none
        slot = {name: k for k, name in enumerate(by_len)}
        task_slot = {t: k for k, t in enumerate(dict.fromkeys(s.task for s in samples))}
        acc_task = torch.zeros(len(task_slot), 3, self._WIDTH, dtype=torch.float64)
        prepared = {}

        def prep(i):
            if i not in prepared:
                prepared[i] = prepare_training(samples[i], d.window)
            return prepared[i]

        qd = p.model.config.query_dependent
        mine = [i for i in range(len(samples)) if i % p.engine.world == p.engine.rank]
        bs = p.cfg.train.batch_size
        for c in range(0, len(mine), bs):
            chunk = mine[c:c + bs]
            for cut in (True, False):
                rows = [i for i in chunk if prep(i)[0].truncated == cut]
                if not rows:
                    continue
                ids, mask, lab = p.pad([prep(i)[0].llm_ids for i in rows], [prep(i)[1] for i in rows])
                tasks = [samples[i].task for i in rows]
                scores = [self.score_rows(ids, mask, lab, None, tasks)]
                if cut:
                    for src in (rows, [partner[i] for i in rows]):
                        mids = [prep(j)[0].middle for j in src]
                        qs = [samples[j].query_ids if qd else None for j in src]
                        bounds = [balanced_boundaries(m.numel(), p.segment_len) for m in mids]
                        scores.insert(-1, self.score_rows(ids, mask, lab,
                                                           p.compress_batch(mids, qs, bounds), tasks))
                else:
                    scores = scores * 3
                for r, i in enumerate(rows):
                    for m in range(3):
                        acc[slot[labels_of[i]], m] += scores[m][r]
                        acc_task[task_slot[samples[i].task], m] += scores[m][r]
        if p.engine.world > 1:
            acc, acc_task = (self._summed_over_ranks(a) for a in (acc, acc_task))
        p.model.train()
        out = self.qa_metrics(acc.sum(0))
        if len(by_len) > 1:
            out["by_length"] = {str(name): self.qa_metrics(acc[k]) for name, k in slot.items()}
        if len(task_slot) > 1:
            out["by_task"] = {task: self.qa_metrics(acc_task[k]) for task, k in task_slot.items()}
        return out

    def _summed_over_ranks(self, acc: torch.Tensor) -> torch.Tensor:
        """`acc` summed over the ranks (each scores its share of the samples)."""
        e = self.parts.engine
        flat = [e.all_reduce_mean(float(x)) * e.world for x in acc.flatten()]
        return torch.tensor(flat, dtype=torch.float64).view_as(acc)

    def qa_metrics(self, acc: torch.Tensor) -> dict:
        """Validation metrics from summed scores acc [3 (own, swapped, none), _WIDTH]."""
        tokens, samples = max(1.0, float(acc[0, 1])), max(1.0, float(acc[0, 4]))
        out = {"val_loss": float(acc[0, 0]) / tokens,
               "val_loss_swapped_memory": float(acc[1, 0]) / tokens,
               "val_loss_no_memory": float(acc[2, 0]) / tokens,
               "val_tokens": int(acc[0, 1])}
        k = self._DIGITS
        for m, suffix in ((0, ""), (1, "_swapped_memory")):
            out[f"val_answer_acc{suffix}"] = float(acc[m, 2]) / tokens
            out[f"val_exact{suffix}"] = float(acc[m, 3]) / samples
            counts = acc[m, 5 + k:5 + 2 * k]
            if float(counts.sum()) > 0:
                out[f"val_digit_acc{suffix}"] = float(acc[m, 5:5 + k].sum() / counts.sum())
                if m == 0:
                    out["val_digit_acc_by_pos"] = [round(float(h / max(1.0, float(c))), 4)
                                                   for h, c in zip(acc[m, 5:5 + k], counts)]
        return out
