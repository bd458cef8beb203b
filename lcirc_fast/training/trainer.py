"""The LCIRC training loop (stage 1: LM on long documents; stage 2: QD long-form QA).

Each backward call (micro-step) takes `train.batch_size` samples (the losses: objectives.py);
`train.grad_accum` micro-steps make an optimizer step. The loop logs each optimizer step to
log.jsonl, validates every `train.eval_every` steps (validation.py), checkpoints every
`train.save_every` steps (checkpoint.py) and resumes exactly from the newest checkpoint; the
output_dir is claimed and locked first (run_dir.py).
"""
from __future__ import annotations

import json
import math
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data import stage1_stream
from ..errors import RunError
from ..memory import CompressedMemory
from ..models.init_recipe import center_positions
from .batching import RunParts
from .builders import DataBundle, build_base, build_data, build_model, hay_at
from .checkpoint import Checkpoints
from .config import TrainConfig
from .engine import dist_env, make_engine
from .objectives import Objectives
from .run_dir import RunLock, append_line, claim, replace_text, truncate_log
from .schedule import make_scheduler
from .validation import Validator


def _warn(msg: str) -> None:
    """A warning line on stderr (not a bound method: a Trainer is freed, and its lock released,
    as soon as it is dropped)."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


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
            claim(self.out)
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
        parts = RunParts(cfg, self.model, self.engine, self.data, self.tok, self.device, self.pad_id,
                         self.segment_len)
        self.objectives = Objectives(parts)
        self.validator = Validator(parts)
        self.checkpoints = Checkpoints(self.out, self.engine, t.keep_last, _warn)
        if self.rank == 0:
            self.checkpoints.prepare()
            replace_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2))
        self.engine.barrier()
        self.opt_step = 0
        self.best_val = math.inf
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

    # ---------------------------------------------------------------- objectives and validation
    def validate(self) -> dict:
        """Validation metrics of the current weights (see :class:`Validator`)."""
        return self.validator.validate()

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
        states = [None if m is None else m.state_dict() for m in self.objectives.streams]
        return states[0] if len(states) == 1 else states

    def _set_streams_state(self, state) -> None:
        states = state if isinstance(state, list) else [state]
        if self.cfg.stage != 1:
            states = [None] * self.cfg.train.batch_size
        if len(states) != self.cfg.train.batch_size:
            raise ValueError(f"it holds {len(states)} document streams, this run has train.batch_size "
                             f"= {self.cfg.train.batch_size}")
        self.objectives.streams = [None if x is None else
                        CompressedMemory.from_state_dict(x, self.model, "the checkpoint's memory")
                        for x in states]

    def _resume(self, resume: str):
        """Load the checkpoint `resume` names ('auto': the newest complete one; 'none': none),
        then drop log.jsonl records past the step the run continues from."""
        path = self.checkpoints.pick(resume)
        if path is not None:
            self.checkpoints.load(path, self._set_client_state)
            self._log(f"resumed from {path} at optimizer step {self.opt_step}")
        if self.rank == 0:
            truncate_log(self.out / "log.jsonl", self.opt_step)

    def _check_weights(self) -> None:
        """Stop before checkpointing weights that are no longer finite."""
        bad = [n for n, p in self.model.named_parameters()
               if p.requires_grad and not bool(torch.isfinite(p.detach()).all())]
        if bad:
            self._diverged(f"the weight {bad[0]} is not finite", self.engine.micro, done=True)

    def _diverged(self, what: str, micro: int, done: bool = False):
        """Stop a run whose loss or weights stopped being finite (RunError: the run failed);
        `done`: found after optimizer step opt_step, else while computing the next one."""
        t = self.cfg.train
        step = self.opt_step if done else self.opt_step + 1
        kept = "; the checkpoints written before it are kept" if self.opt_step else ""
        raise RunError(f"training diverged: {what} at optimizer step {step} (micro-step {micro}) "
                       f"with train.lr = {t.lr:g}; lower train.lr (or set train.grad_clip), then resume or "
                       f"start fresh with --resume none{kept}")

    # ---------------------------------------------------------------- logging
    def _log(self, msg: str):
        if self.rank == 0 and not self.quiet:
            print(msg, flush=True)

    def _record(self, rec: dict):
        if self.rank == 0:
            append_line(self.out / "log.jsonl", json.dumps(rec))

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
                loss, ntok, extra = self.objectives.stage1([next(it) for it in streams])
            else:
                loss, ntok, extra = self.objectives.stage2(micro, self.opt_step)
            if not torch.isfinite(loss):
                self._diverged(f"the training loss is {float(loss.detach())}", micro)
            self.engine.backward(loss)
            self.objectives.detach_streams()
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
                self._check_weights()
                self.checkpoints.save(self.opt_step, self._client_state())
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
        self.checkpoints.publish(self.model, "final")
        return {"opt_step": self.opt_step, "history": self.history, "val": self.val_history,
                "final_val": final, "best_val": self.best_val}

    def _validate_and_keep(self):
        m = self.validate()
        if not math.isfinite(m["val_loss"]):
            self._diverged(f"the validation loss is {m['val_loss']}", self.engine.micro, done=True)
        m["step"] = self.opt_step
        self.val_history.append(m)
        self._record({"validation": m})
        self._log(f"validation @ {self.opt_step}: {json.dumps(m)}")
        if m["val_loss"] < self.best_val:
            self.best_val = m["val_loss"]
            self.checkpoints.publish(self.model, "best", {"opt_step": self.opt_step, **m})


def run_training(cfg: TrainConfig, resume: str = "auto", quiet: bool = False,
                 stop_at: int | None = None) -> dict:
    trainer = Trainer(cfg, resume=resume, quiet=quiet)
    try:
        return trainer.train(stop_at=stop_at)
    finally:
        trainer.close()
