"""The LCIRC training loop (stage 1: LM on long documents; stage 2: QD long-form QA)."""
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
from ..data.qa import prepare_training
from ..data.stage1 import draw_boundaries
from ..errors import CheckpointError
from ..eval.perplexity import window_nll
from ..memory import CompressedMemory
from ..modules.zero import whole
from ..segmenting import balanced_boundaries
from ..models.init_recipe import center_positions
from .builders import DataBundle, bptt_policy, build_base, build_data, build_model
from .checkpoint import (RunLock, load_state, save_state, truncate_log, verify_checkpoint,
                         write_manifest)
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
        self.ckpt_dir = self.out / "checkpoints"
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        self.engine.barrier()
        self.opt_step = 0
        self.best_val = math.inf
        self.memory = None
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
    def _stage1_iter(self, skip: int):
        d = self.cfg.data
        g = torch.Generator().manual_seed(self.cfg.seed)
        it = stage1_stream(self.data.train_docs, d.window, g, d.segmenting, self.segment_len, d.segment_min,
                           d.segment_max, shard=(self.rank, self.world),
                           repeat_passage=d.repeat_passage)
        for _ in range(skip):
            next(it)
        return it

    # ---------------------------------------------------------------- steps
    def _llm_loss(self, ids, labels, memory):
        def fn():
            return self.model(ids, memory=memory, labels=labels).loss
        if self.cfg.train.activation_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, use_reentrant=False)
        return fn()

    def _touch(self, loss):
        """Keep every trainable parameter in the graph when no memory was used, and always under
        ZeRO-3, whose gradient reduction needs the same parameters from every rank."""
        if loss.requires_grad and self.memory is not None and not self.engine.grads_everywhere:
            return loss
        return loss + 0.0 * sum(whole(p)[0].sum() for p in self.model.parameters() if p.requires_grad)

    def _stage1_micro(self, step) -> tuple[torch.Tensor, int]:
        policy = bptt_policy(self.cfg.train.bptt)
        seg = step.segment.to(self.device)[None]
        if step.step == 0 or self.memory is None:
            self.memory = self.model.compress(seg, boundaries=[0, seg.shape[1]], bptt=policy)
        else:
            self.memory.append(self.model, seg, bptt=policy)
        win = step.window.to(self.device)[None]
        loss = self._llm_loss(win, win, self.memory)
        return self._touch(loss), win.numel() + seg.numel()

    def _stage2_micro(self, micro: int) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        seed = (cfg.seed * 1_000_003 + self.rank * 7919 + micro) % (2**63)
        rng = random.Random(seed)
        sample = self.data.qa_train(rng)
        ht, labels = prepare_training(sample, cfg.data.window)
        mem = None
        if ht.truncated:
            d = cfg.data
            g = torch.Generator().manual_seed(seed)
            b = draw_boundaries(ht.middle.numel(), d.segmenting, g, self.segment_len, d.segment_min, d.segment_max)
            q = sample.query_ids.to(self.device)[None] if self.model.config.query_dependent else None
            mem = self.model.compress(ht.middle.to(self.device)[None], boundaries=b, query_ids=q,
                                      bptt=bptt_policy(cfg.train.bptt, g))
        self.memory = mem
        ids = ht.llm_ids.to(self.device)[None]
        loss = self._llm_loss(ids, labels.to(self.device)[None], mem)
        self.memory = mem
        return self._touch(loss), sample.input_ids.numel()

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
            for i, s in enumerate(self.data.qa_val):
                if i % self.world != self.rank:
                    continue
                ht, labels = prepare_training(s, d.window)
                mem = None
                if ht.truncated:
                    q = s.query_ids.to(self.device)[None] if self.model.config.query_dependent else None
                    mem = self.model.compress(ht.middle.to(self.device)[None],
                                              boundaries=balanced_boundaries(ht.middle.numel(), self.segment_len),
                                              query_ids=q)
                ids = ht.llm_ids.to(self.device)[None]
                lab = labels.to(self.device)[None]
                n = int((lab[:, 1:] != -100).sum())
                a = float(self.model(ids, memory=mem, labels=lab).loss) * n
                b = float(self.model(ids, labels=lab).loss) * n
                nll += torch.tensor([a, n, b, 0.0], dtype=torch.float64)
        if self.world > 1:
            nll = torch.tensor([self.engine.all_reduce_mean(float(x)) * self.world for x in nll])
        self.model.train()
        tokens = max(1.0, float(nll[1]))
        out = {"val_loss": float(nll[0]) / tokens, "val_loss_no_memory": float(nll[2]) / tokens,
               "val_tokens": int(nll[1])}
        if cfg.stage == 1 and math.isfinite(float(nll[3])):
            # the gap to val_loss is what the memory's content (not its presence) is worth
            out["val_loss_swapped_memory"] = float(nll[3]) / tokens
        return out

    # ---------------------------------------------------------------- checkpoints
    def _client_state(self) -> dict:
        return {"opt_step": self.opt_step, "micro": self.engine.micro, "world": self.world,
                "best_val": self.best_val, "history": self.history,
                "val_history": self.val_history, "memory": None if self.memory is None else self.memory.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                        "numpy": np.random.get_state()}}

    def _set_client_state(self, st: dict) -> None:
        self.opt_step, self.engine.micro = int(st["opt_step"]), int(st["micro"])
        self.best_val = float(st["best_val"])
        self.history, self.val_history = list(st["history"]), list(st["val_history"])
        self.memory = (None if st["memory"] is None else
                       CompressedMemory.from_state_dict(st["memory"], self.model, "the checkpoint's memory"))
        torch.set_rng_state(st["rng"]["torch"])
        random.setstate(st["rng"]["python"])
        np.random.set_state(st["rng"]["numpy"])

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
        stream = self._stage1_iter(self.engine.micro) if cfg.stage == 1 else None
        bar = None
        if self.rank == 0 and not self.quiet:
            from tqdm import tqdm

            bar = tqdm(total=t.max_steps, initial=self.opt_step, desc=f"stage {cfg.stage}", file=sys.stderr)
        start, window_loss, window_n, window_tok, t0 = time.time(), 0.0, 0, 0, time.time()
        if self.opt_step == 0 and t.eval_every:
            self._validate_and_keep()
        while self.opt_step < t.max_steps:
            micro = self.engine.micro
            if cfg.stage == 1:
                loss, ntok = self._stage1_micro(next(stream))
            else:
                loss, ntok = self._stage2_micro(micro)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss)} at micro-step {micro}")
            self.engine.backward(loss)
            if self.memory is not None:
                self.memory.detach_()
            window_loss += float(loss.detach())
            window_n += 1
            window_tok += ntok
            if not self.engine.step():
                continue
            self.opt_step += 1
            dt = time.time() - t0
            rec = {"step": self.opt_step, "micro": self.engine.micro,
                   "loss": self.engine.all_reduce_mean(window_loss / window_n),
                   "lr": self.engine.lr(), "grad_norm": self.engine.last_grad_norm,
                   "tokens_per_s": window_tok * self.world / max(dt, 1e-9),
                   "rss_mb": _rss_mb(), "elapsed_s": time.time() - start}
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
