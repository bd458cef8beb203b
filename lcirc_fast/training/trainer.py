"""The LCIRC training loop (stage 1: LM on long documents; stage 2: QD long-form QA).

Each backward call (micro-step) takes `train.batch_size` samples: stage 2 draws that many QA
samples (middles compressed together where their segment boundaries agree, memories stacked,
LLM inputs right-padded), stage 1 advances that many document streams by one step each;
`train.grad_accum` micro-steps make an optimizer step. Optional terms: the contrast hinge against
the in-batch swapped memory (`train.contrast_weight`) and memory gradient centring. Stage-2
validation scores every sample with its own memory, another sample's memory and none.
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.checkpoint

from ..data import stage1_stream
from ..data.collate import pad_batch
from ..data.qa import prepare_training
from ..data.stage1 import Stage1Step, draw_boundaries
from ..errors import CheckpointError
from ..eval.perplexity import window_nll
from ..memory import CompressedMemory
from ..models.init_recipe import center_positions
from ..modules.zero import whole
from ..segmenting import balanced_boundaries
from .builders import DataBundle, bptt_policy, build_base, build_data, build_model, hay_at
from .checkpoint import RunLock, load_state, save_state, truncate_log, verify_checkpoint, write_manifest
from .config import TrainConfig
from .engine import dist_env, make_engine
from .schedule import make_scheduler


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Trainer:
    """One training run in cfg.output_dir, which it locks (rank 0) until :meth:`close`."""

    def __init__(self, cfg: TrainConfig, resume: str = "auto", quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        self.out = Path(cfg.output_dir)
        self._lock = RunLock(self.out)
        if dist_env()[0] == 0:
            self._lock.acquire()
        try:
            self._setup(resume)
        except BaseException:
            self.close()
            raise

    def _setup(self, resume: str):
        cfg = self.cfg
        rank, world, local = dist_env()
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        base, self.tok = build_base(cfg, self.device)
        self.model = build_model(cfg, base)
        self.segment_len = self.model.config.segment_len   # resolved: fixed and validation segments
        self.data: DataBundle = build_data(cfg, self.tok, base.config.vocab_size)
        if cfg.stage == 1 and not self.data.train_docs:
            raise ValueError("no stage-1 training documents")
        pad = getattr(self.tok, "pad_token_id", None) if self.tok is not None else None
        self.pad_id = int(pad if pad is not None else 0)
        if cfg.stage == 2 and self.data.qa_train is None:
            raise ValueError(f"data.source={cfg.data.source!r} gives no QA samples for stage 2")
        if cfg.lcirc.init.center_positions and not cfg.init_from:
            if not self.data.train_docs:
                raise ValueError("lcirc.init.center_positions needs stage-1 training documents")
            center_positions(self.model, self.data.train_docs)
        t = cfg.train
        self.engine = make_engine(self.model, cfg,
                                  lambda opt: make_scheduler(opt, t.warmup_steps, t.max_steps, t.min_lr_ratio))
        self.model = self.engine.model
        self.rank, self.world = self.engine.rank, self.engine.world
        streams = t.batch_size * self.world
        if cfg.stage == 1 and len(self.data.train_docs) < streams:
            raise ValueError(f"train.batch_size = {t.batch_size} on {self.world} process(es) reads "
                             f"{streams} document streams, but there are only "
                             f"{len(self.data.train_docs)} training documents")
        self.ckpt_dir = self.out / "checkpoints"
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        self.engine.barrier()
        self.opt_step = 0
        self.best_val = math.inf
        self.streams: list = [None] * t.batch_size   # stage 1: each stream's memory
        self.history: list[dict] = []
        self.val_history: list[dict] = []
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        self._resume(resume)

    def close(self) -> None:
        """Release the output_dir lock (also released by the OS if the process dies)."""
        self._lock.release()

    # ---------------------------------------------------------------- data streams
    def _stage1_iters(self, skip: int) -> list:
        """train.batch_size document streams per rank, each `skip` micro-steps in. Stream i of
        rank r reads shard r * B + i of every epoch's document order (B = 1: the rank's shard)."""
        d, b = self.cfg.data, self.cfg.train.batch_size
        its = []
        for i in range(b):
            g = torch.Generator().manual_seed(self.cfg.seed)
            it = stage1_stream(self.data.train_docs, d.window, g, d.segmenting, self.segment_len,
                               d.segment_min, d.segment_max, shard=(self.rank * b + i, self.world * b),
                               repeat_passage=d.repeat_passage, copy_mix=d.copy_mix)
            for _ in range(skip):
                next(it)
            its.append(it)
        return its

    # ---------------------------------------------------------------- steps
    def _llm_loss(self, ids, labels, memory, mask=None):
        def fn():
            return self.model(ids, memory=memory, attention_mask=mask, labels=labels).loss
        if self.cfg.train.activation_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, use_reentrant=False)
        return fn()

    def _touch(self, loss, used_memory: bool):
        """Keep every trainable parameter in the graph when no memory was used, and always under
        ZeRO-3, whose gradient reduction needs the same parameters from every rank."""
        if loss.requires_grad and used_memory and not self.engine.grads_everywhere:
            return loss
        return loss + 0.0 * sum(whole(p)[0].sum() for p in self.model.parameters() if p.requires_grad)

    def _pad(self, seqs: list, labels: list | None = None):
        """(ids, attention_mask or None, labels) on the device: stacked when every sequence has
        the same length, else right-padded (mask 0, label -100 on the padding)."""
        if all(x.numel() == seqs[0].numel() for x in seqs):
            ids = torch.stack(seqs).to(self.device)
            return ids, None, ids if labels is None else torch.stack(labels).to(self.device)
        ids, mask, lab = pad_batch(seqs, self.pad_id, labels)
        return ids.to(self.device), mask.to(self.device), lab.to(self.device)

    def _rows(self, memory: CompressedMemory, index) -> CompressedMemory:
        """A read-only memory whose row i is row index[i] of `memory` (autograd graph kept)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=memory.device)
        return CompressedMemory([], None, memory.num_segments,
                                memory.context_tokens[idx.to(memory.context_tokens.device)],
                                cap=None, lengths=memory.lengths[idx], hidden=memory.hidden[idx],
                                owner=self.model)

    def _rolled(self, memory: CompressedMemory) -> CompressedMemory:
        """Row i reads row i - 1's memory: another sample's memory, the swapped control."""
        return self._rows(memory, torch.arange(memory.batch_size).roll(1))

    def _compress_batch(self, middles: list, queries: list, bounds: list, policies: list | None = None):
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
        return self._rows(CompressedMemory.stack(mems), [where[i] for i in range(len(order))])

    def _objective(self, ids, mask, labels, memory) -> tuple[torch.Tensor, dict]:
        """The LM / answer loss with `memory`, plus the contrast term (train.contrast_weight)
        against the in-batch swapped memory; `memory_grad_centering` removes the batch-mean
        gradient of the memory. Returns (loss, extra per-step log values)."""
        t = self.cfg.train
        if memory is not None and t.memory_grad_centering and torch.is_grad_enabled():
            h = memory.hidden
            if h.requires_grad:
                h.register_hook(lambda g: g - g.mean(0, keepdim=True))
        loss = self._llm_loss(ids, labels, memory, mask)
        extra = {}
        if memory is not None and t.contrast_weight > 0 and ids.shape[0] > 1:
            swapped = self._llm_loss(ids, labels, self._rolled(memory), mask)
            extra = {"loss_own": float(loss.detach()), "loss_swapped": float(swapped.detach())}
            loss = loss + t.contrast_weight * torch.relu(t.contrast_margin - (swapped - loss))
        return loss, extra

    def _stage1_micro(self, steps) -> tuple[torch.Tensor, int, dict]:
        """One backward's loss over one step of each document stream (`steps`: a Stage1Step per
        stream); returns (loss, tokens read, extra log values)."""
        if isinstance(steps, Stage1Step):
            steps = [steps]
        if len(self.streams) != len(steps):
            self.streams = [None] * len(steps)
        policy = bptt_policy(self.cfg.train.bptt)
        ntok = 0
        for i, step in enumerate(steps):
            seg = step.segment.to(self.device)[None]
            if step.step == 0 or self.streams[i] is None:
                self.streams[i] = self.model.compress(seg, boundaries=[0, seg.shape[1]], bptt=policy)
            else:
                self.streams[i].append(self.model, seg, bptt=policy)
            ntok += step.window.numel() + seg.numel()
        memory = self.streams[0] if len(steps) == 1 else CompressedMemory.stack(self.streams)
        ids, mask, labels = self._pad([s.window for s in steps])
        loss, extra = self._objective(ids, mask, labels, memory)
        return self._touch(loss, True), ntok, extra

    def _qa_items(self, micro: int) -> list:
        """The train.batch_size QA samples of micro-step `micro`: (seed, sample, head/tail, labels)."""
        cfg, b = self.cfg, self.cfg.train.batch_size
        n_ctx = hay_at(cfg.data.hay_schedule, self.opt_step)
        items = []
        for i in range(b):
            seed = (cfg.seed * 1_000_003 + self.rank * 7919 + micro * b + i) % (2**63)
            sample = self.data.qa_train(random.Random(seed), n_ctx)
            ht, labels = prepare_training(sample, cfg.data.window)
            items.append((seed, sample, ht, labels))
        return items

    def _stage2_micro(self, micro: int) -> tuple[torch.Tensor, int, dict]:
        cfg, d = self.cfg, self.cfg.data
        qd = self.model.config.query_dependent
        items = self._qa_items(micro)
        parts, extra = [], {}
        for group in ([it for it in items if it[2].truncated], [it for it in items if not it[2].truncated]):
            if not group:
                continue
            memory = None
            if group[0][2].truncated:
                bounds, policies = [], []
                for seed, _, ht, _ in group:
                    g = torch.Generator().manual_seed(seed)
                    bounds.append(draw_boundaries(ht.middle.numel(), d.segmenting, g, self.segment_len,
                                                  d.segment_min, d.segment_max))
                    policies.append(bptt_policy(cfg.train.bptt, g))
                memory = self._compress_batch([it[2].middle for it in group],
                                              [it[1].query_ids if qd else None for it in group],
                                              bounds, policies)
            ids, mask, labels = self._pad([it[2].llm_ids for it in group], [it[3] for it in group])
            loss, more = self._objective(ids, mask, labels, memory)
            extra.update(more)
            parts.append((loss, int((labels[:, 1:] != -100).sum()), memory is not None))
        if len(parts) == 1:
            loss = parts[0][0]
        else:   # the mean over every answer token of the batch
            loss = sum(part * n for part, n, _ in parts) / max(1, sum(n for _, n, _ in parts))
        ntok = sum(it[1].input_ids.numel() for it in items)
        return self._touch(loss, all(m for _, _, m in parts)), ntok, extra

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict:
        cfg, d = self.cfg, self.cfg.data
        self.model.eval()
        nll = torch.zeros(4, dtype=torch.float64)
        if cfg.stage == 1:
            for i, doc in enumerate(self.data.val_docs):
                if i % self.world != self.rank:
                    continue
                a, n = window_nll(self.model, doc, d.window, "lcirc", segment_len=self.segment_len)
                b, _ = window_nll(self.model, doc, d.window, "base", segment_len=self.segment_len)
                c = float("nan")
                docs = self.data.val_docs
                other = docs[(i + 1) % len(docs)]
                if len(docs) > 1 and doc.numel() > d.window and other.numel() >= doc.numel():
                    # control: the same window with another document's prefix compressed
                    swapped = torch.cat([other[:doc.numel() - d.window], doc[-d.window:]])
                    c, _ = window_nll(self.model, swapped, d.window, "lcirc", segment_len=self.segment_len)
                nll += torch.tensor([a, n, b, c], dtype=torch.float64)
        else:
            return self._validate_qa()
        if self.world > 1:
            nll = torch.tensor([self.engine.all_reduce_mean(float(x)) * self.world for x in nll])
        self.model.train()
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
    def _score_rows(self, ids, mask, labels, memory, tasks) -> torch.Tensor:
        """Teacher-forced answer scores of each row: float64 [B, _WIDTH]. Pass-key digits are the
        answer tokens that decode to one digit (needs a tokenizer)."""
        logits = self.model(ids, memory=memory, attention_mask=mask).logits[:, :-1].float()
        gold = labels[:, 1:]
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
        when there are several."""
        d = self.cfg.data
        samples = self.data.qa_val
        labels_of = self.data.qa_val_lengths or ["all"] * len(samples)
        by_len: dict = {}
        for i, name in enumerate(labels_of):
            by_len.setdefault(name, []).append(i)
        partner = {}
        for idx in by_len.values():
            for k, i in enumerate(idx):
                partner[i] = idx[k - 1] if len(idx) > 1 else i
        acc = torch.zeros(len(by_len), 3, self._WIDTH, dtype=torch.float64)   # length, own/swapped/none
        slot = {name: k for k, name in enumerate(by_len)}
        prepared = {}

        def prep(i):
            if i not in prepared:
                prepared[i] = prepare_training(samples[i], d.window)
            return prepared[i]

        qd = self.model.config.query_dependent
        mine = [i for i in range(len(samples)) if i % self.world == self.rank]
        bs = self.cfg.train.batch_size
        for c in range(0, len(mine), bs):
            chunk = mine[c:c + bs]
            for cut in (True, False):
                rows = [i for i in chunk if prep(i)[0].truncated == cut]
                if not rows:
                    continue
                ids, mask, lab = self._pad([prep(i)[0].llm_ids for i in rows], [prep(i)[1] for i in rows])
                tasks = [samples[i].task for i in rows]
                scores = [self._score_rows(ids, mask, lab, None, tasks)]
                if cut:
                    for src in (rows, [partner[i] for i in rows]):
                        mids = [prep(j)[0].middle for j in src]
                        qs = [samples[j].query_ids if qd else None for j in src]
                        bounds = [balanced_boundaries(m.numel(), self.segment_len) for m in mids]
                        scores.insert(-1, self._score_rows(ids, mask, lab,
                                                           self._compress_batch(mids, qs, bounds), tasks))
                else:
                    scores = scores * 3
                for r, i in enumerate(rows):
                    for m in range(3):
                        acc[slot[labels_of[i]], m] += scores[m][r]
        if self.world > 1:
            flat = [self.engine.all_reduce_mean(float(x)) * self.world for x in acc.flatten()]
            acc = torch.tensor(flat, dtype=torch.float64).view_as(acc)
        self.model.train()
        out = self._qa_metrics(acc.sum(0))
        if len(by_len) > 1:
            out["by_length"] = {str(name): self._qa_metrics(acc[k]) for name, k in slot.items()}
        return out

    def _qa_metrics(self, acc: torch.Tensor) -> dict:
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

    # ---------------------------------------------------------------- checkpoints
    def _client_state(self) -> dict:
        return {"opt_step": self.opt_step, "micro": self.engine.micro, "world": self.world,
                "best_val": self.best_val, "history": self.history,
                "val_history": self.val_history, "memory": self._streams_state(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                        "numpy": np.random.get_state()}}

    def _set_client_state(self, st: dict) -> None:
        self.opt_step, self.engine.micro = int(st["opt_step"]), int(st["micro"])
        self.best_val = float(st["best_val"])
        self.history, self.val_history = list(st["history"]), list(st["val_history"])
        self._set_streams_state(st["memory"])
        torch.set_rng_state(st["rng"]["torch"])
        random.setstate(st["rng"]["python"])
        np.random.set_state(st["rng"]["numpy"])

    def _streams_state(self):
        """Stage 1: the memory of each document stream (one state dict, or a list when
        train.batch_size > 1); stage 2 keeps no memory across micro-steps."""
        if self.cfg.stage != 1:
            return None
        states = [None if m is None else m.state_dict() for m in self.streams]
        return states[0] if len(states) == 1 else states

    def _set_streams_state(self, state) -> None:
        states = state if isinstance(state, list) else [state]
        if self.cfg.stage != 1:
            states = [None] * self.cfg.train.batch_size
        if len(states) != self.cfg.train.batch_size:
            raise ValueError(f"it holds {len(states)} document streams, this run has train.batch_size "
                             f"= {self.cfg.train.batch_size}")
        self.streams = [None if x is None else
                        CompressedMemory.from_state_dict(x, self.model, "the checkpoint's memory")
                        for x in states]

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step<N> atomically (temp dir, manifest, rename); point LATEST at it."""
        name = f"step{self.opt_step:07d}"
        tmp = self.ckpt_dir / f".tmp-{name}"
        final = self.ckpt_dir / name
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        self.engine.barrier()
        self.engine.save(tmp)
        save_state(tmp, f"trainer_rank{self.rank}", self._client_state())
        self.engine.barrier()
        if self.rank == 0:
            write_manifest(tmp, self.opt_step)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            latest_tmp = self.ckpt_dir / ".LATEST.tmp"
            latest_tmp.write_text(name)
            os.replace(latest_tmp, self.ckpt_dir / "LATEST")
            steps = sorted(p for p in self.ckpt_dir.glob("step*") if p.is_dir())
            for old in steps[:-max(1, self.cfg.train.keep_last)]:
                shutil.rmtree(old, ignore_errors=True)
        self.engine.barrier()
        return final

    def _resume(self, resume: str):
        """Load the checkpoint `resume` names ('auto': the newest complete one; 'none': none),
        then drop log.jsonl records past the step the run continues from."""
        path = self._checkpoint_to_resume(resume)
        if path is not None:
            self._load_checkpoint(path)
            self._log(f"resumed from {path} at optimizer step {self.opt_step}")
        if self.rank == 0:
            truncate_log(self.out / "log.jsonl", self.opt_step)

    def _checkpoint_to_resume(self, resume: str) -> Path | None:
        """Rank 0 picks and verifies the checkpoint; every rank gets its choice."""
        if resume == "none":
            return None
        code = 0
        if self.rank == 0:
            try:
                code = self._newest_usable() if resume == "auto" else max(1, verify_checkpoint(Path(resume)))
            except Exception:
                self.engine.broadcast_int(-1)  # the other ranks stop too
                raise
        code = self.engine.broadcast_int(code)
        if code < 0:
            raise CheckpointError(f"rank 0 found no usable checkpoint for --resume {resume} (see its error)")
        if code == 0:
            return None
        return self.ckpt_dir / f"step{code:07d}" if resume == "auto" else Path(resume)

    def _newest_usable(self) -> int:
        """Step of the newest verifiable checkpoint in checkpoints/ (0 if there is none at all);
        each newer one that fails verification is named in a warning."""
        found = sorted((p for p in self.ckpt_dir.glob("step*") if p.is_dir()), reverse=True)
        latest = self.ckpt_dir / "LATEST"
        named = latest.read_text().strip() if latest.is_file() else None
        if named and not (self.ckpt_dir / named).is_dir():
            self._warn(f"LATEST names checkpoint {self.ckpt_dir / named}, which is missing")
        if not found:
            if named:
                raise CheckpointError(f"no checkpoint left in {self.ckpt_dir} although LATEST names "
                                      f"{named}; start fresh with --resume none or a new output_dir")
            return 0
        reasons = []
        for p in found:
            try:
                step = verify_checkpoint(p)
                if p.name != f"step{step:07d}":
                    raise CheckpointError(f"checkpoint {p}: its manifest is for optimizer step {step}")
                return step
            except CheckpointError as e:
                reasons.append(str(e))
                self._warn(f"skipping checkpoint {p}: {e}")
        why = "; ".join(reasons)
        advice = "" if "start fresh" in why else "; start fresh with --resume none or a new output_dir"
        raise CheckpointError(f"no usable checkpoint in {self.ckpt_dir}: {why}{advice}")

    def _load_checkpoint(self, path: Path) -> None:
        name = f"trainer_rank{self.rank}"
        if not (path / f"{name}.json").is_file():
            raise CheckpointError(f"checkpoint {path} has no {name}.json: it was written by fewer "
                                  f"processes than this run's {self.world}")
        st = load_state(path, name)
        try:
            if st["world"] != self.world:
                raise ValueError(f"it was written by {st['world']} processes, this run has {self.world}")
            self.engine.load(path)
            self._set_client_state(st)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"checkpoint {path}: cannot restore the trainer state ({e!r})") from None

    def save_best(self, metrics: dict) -> None:
        best = self.out / "best"
        tmp = self.out / ".best.tmp"
        with self.engine.whole_weights():    # every rank: a collective under ZeRO-3
            if self.rank == 0:
                if tmp.exists():
                    shutil.rmtree(tmp)
                self.model.save_pretrained(tmp)
                (tmp / "metrics.json").write_text(json.dumps({"opt_step": self.opt_step, **metrics}, indent=2))
                if best.exists():
                    shutil.rmtree(best)
                os.rename(tmp, best)
        self.engine.barrier()

    # ---------------------------------------------------------------- logging
    def _log(self, msg: str):
        if self.rank == 0 and not self.quiet:
            print(msg, flush=True)

    def _warn(self, msg: str):
        if self.rank == 0:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    def _record(self, rec: dict):
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    # ---------------------------------------------------------------- loop
    def train(self, stop_at: int | None = None) -> dict:
        """Run to train.max_steps (or stop early, checkpointed, after optimizer step `stop_at`)."""
        cfg, t = self.cfg, self.cfg.train
        if self.rank == 0 and not self._lock.held:
            self._lock.acquire()
        self.model.train()
        self.model.base.eval()  # frozen backbone: no dropout
        streams = self._stage1_iters(self.engine.micro) if cfg.stage == 1 else None
        bar = None
        if self.rank == 0 and not self.quiet:
            from tqdm import tqdm

            bar = tqdm(total=t.max_steps, initial=self.opt_step, desc=f"stage {cfg.stage}", file=sys.stderr)
        start, window_loss, window_n, window_tok, t0 = time.time(), 0.0, 0, 0, time.time()
        window_extra: dict = {}
        if self.opt_step == 0 and t.eval_every:
            self._validate_and_keep()
        while self.opt_step < t.max_steps:
            micro = self.engine.micro
            if cfg.stage == 1:
                loss, ntok, extra = self._stage1_micro([next(it) for it in streams])
            else:
                loss, ntok, extra = self._stage2_micro(micro)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss)} at micro-step {micro}")
            self.engine.backward(loss)
            for m in self.streams:
                if m is not None:
                    m.detach_()
            window_loss += float(loss.detach())
            window_n += 1
            window_tok += ntok
            for k, v in extra.items():
                window_extra[k] = window_extra.get(k, 0.0) + v
            if not self.engine.step():
                continue
            self.opt_step += 1
            dt = time.time() - t0
            rec = {"step": self.opt_step, "micro": self.engine.micro,
                   "loss": self.engine.all_reduce_mean(window_loss / window_n),
                   "lr": self.engine.lr(), "grad_norm": self.engine.last_grad_norm,
                   "tokens_per_s": window_tok * self.world / max(dt, 1e-9),
                   "samples_per_s": window_n * t.batch_size * self.world / max(dt, 1e-9),
                   "rss_mb": _rss_mb(), "elapsed_s": time.time() - start}
            if cfg.stage == 2 and cfg.data.hay_schedule:
                rec["hay"] = hay_at(cfg.data.hay_schedule, self.opt_step - 1)
            rec.update({k: self.engine.all_reduce_mean(v / window_n) for k, v in window_extra.items()})
            if self.device.type == "cuda":
                rec["gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            self.history.append({"step": rec["step"], "loss": rec["loss"]})
            self._record(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            if t.log_every and self.opt_step % t.log_every == 0:
                self._log(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items()}))
            window_loss, window_n, window_tok, t0 = 0.0, 0, 0, time.time()
            window_extra = {}
            if t.eval_every and self.opt_step % t.eval_every == 0:
                self._validate_and_keep()
            out_of_time = t.max_minutes is not None and (time.time() - start) / 60 > t.max_minutes
            out_of_time = out_of_time or (stop_at is not None and self.opt_step >= stop_at)
            if (t.save_every and self.opt_step % t.save_every == 0) or out_of_time or self.opt_step == t.max_steps:
                self.save_checkpoint()
            if out_of_time:
                self._log(f"stopping at optimizer step {self.opt_step} (time limit or stop_at)")
                break
        if bar is not None:
            bar.close()
        final = {}
        if t.eval_every:
            last = self.val_history[-1]["step"] if self.val_history else -1
            if last != self.opt_step:
                self._validate_and_keep()  # the final weights can be the best ones
            final = {k: v for k, v in self.val_history[-1].items() if k != "step"}
        with self.engine.whole_weights():    # every rank: a collective under ZeRO-3
            if self.rank == 0:
                self.model.save_pretrained(self.out / "final")
        self.engine.barrier()
        return {"opt_step": self.opt_step, "history": self.history, "val": self.val_history,
                "final_val": final, "best_val": self.best_val}

    def _validate_and_keep(self):
        m = self.validate()
        m["step"] = self.opt_step
        self.val_history.append(m)
        self._record({"validation": m})
        self._log(f"validation @ {self.opt_step}: {json.dumps(m)}")
        if m["val_loss"] < self.best_val:
            self.best_val = m["val_loss"]
            self.save_best(m)


def run_training(cfg: TrainConfig, resume: str = "auto", quiet: bool = False,
                 stop_at: int | None = None) -> dict:
    trainer = Trainer(cfg, resume=resume, quiet=quiet)
    try:
        return trainer.train(stop_at=stop_at)
    finally:
        trainer.close()
