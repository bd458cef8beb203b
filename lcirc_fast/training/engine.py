"""Optimisation engines with one interface: `backward(loss)` then `step()` per micro-step.

PlainEngine: one process, torch AdamW, manual accumulation and clipping.
DeepSpeedEngine: DeepSpeed ZeRO 0-3 (gloo on CPU, nccl on GPU) with a client AdamW (no op builds).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pickle
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..modules.gca import gates_to_1d
from ..modules.zero import is_partitioned
from .checkpoint import load_state, safe_torch_load, save_state, torch_load_reason, weights_only_loads
from .config import PARAM_GROUPS
from .config_files import read_deepspeed_json


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment (1 process if unset)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def param_group_name(name: str) -> str:
    """Optimizer group of a trainable LCIRC parameter: gates (every tanh gate, the mixer's
    included), compressor (Perceiver and h0 latents), mixer (QD mixer) or gca (GCA blocks)."""
    if name.endswith("attn_gate") or name.endswith("ff_gate"):
        return "gates"
    if name == "latents" or name.startswith("compressor."):
        return "compressor"
    if name.startswith("mixer."):
        return "mixer"
    if name.startswith("gca."):
        return "gca"
    raise ValueError(f"trainable parameter {name!r} belongs to no LCIRC optimizer group")


def param_groups(model, cfg) -> list[dict]:
    """AdamW groups with lr = train.lr * train.lr_mult[group] (1 where unset); empty groups
    are left out. The group name is kept under the key "name"."""
    t = cfg.train  # unknown lr_mult groups were refused by TrainConfig.validate
    by_group: dict[str, list] = {g: [] for g in PARAM_GROUPS}
    for n, p in model.named_parameters():
        if p.requires_grad:
            by_group[param_group_name(n)].append(p)
    groups = []
    for g in PARAM_GROUPS:
        mult = float(t.lr_mult.get(g, 1.0))
        if mult <= 0:
            raise ValueError(f"train.lr_mult.{g} must be > 0, got {mult}")
        if by_group[g]:
            groups.append({"params": by_group[g], "lr": t.lr * mult, "name": g})
    return groups


def scheduled_lr(optimizer, base_lr: float) -> float:
    """train.lr times the scheduler's current multiplier (read from the first group)."""
    g = optimizer.param_groups[0]
    return g["lr"] / g.get("initial_lr", g["lr"]) * base_lr


def _optimizer(model, cfg):
    t = cfg.train
    return torch.optim.AdamW(param_groups(model, cfg), lr=t.lr, betas=tuple(t.betas), eps=1e-8,
                             weight_decay=t.weight_decay)


class PlainEngine:
    """Single-process engine: loss / grad_accum backward; optimizer step on every boundary."""

    kind = "plain"
    grads_everywhere = False

    def __init__(self, model, cfg, scheduler_fn):
        rank, world, _ = dist_env()
        if world > 1:
            raise ValueError("distributed.engine=plain runs one process; use deepspeed for "
                             f"WORLD_SIZE={world}")
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = _optimizer(model, cfg)
        self.scheduler = scheduler_fn(self.optimizer)
        self.base_lr = cfg.train.lr
        self.accum = cfg.train.grad_accum
        self.clip = cfg.train.grad_clip
        self.micro = 0
        self.rank, self.world = 0, 1
        self.last_grad_norm = None

    def backward(self, loss):
        (loss / self.accum).backward()

    def step(self) -> bool:
        """Count a micro-step; on an accumulation boundary update and return True."""
        self.micro += 1
        if self.micro % self.accum:
            return False
        if self.clip:
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def lr(self) -> float:
        """Current learning rate of the base group (train.lr times the schedule)."""
        return scheduled_lr(self.optimizer, self.base_lr)

    def state_dict(self) -> dict:
        return {"model": self.model.lcirc_state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def save(self, directory: Path) -> None:
        """Write the trainable weights, optimizer and schedule as engine.{safetensors,json}."""
        directory.mkdir(parents=True, exist_ok=True)
        save_state(directory, "engine", self.state_dict())

    def load(self, directory: Path) -> None:
        """Restore what :meth:`save` wrote; a mismatch is a CheckpointError naming the directory."""
        st = load_state(directory, "engine")
        try:
            missing, unexpected = self.model.load_state_dict(gates_to_1d(st["model"]), strict=False)
            missing = [k for k in missing if self.model.is_lcirc_key(k)]
            if missing or unexpected:
                raise ValueError(f"missing {missing[:5]}, unexpected {unexpected[:5]}")
            self.optimizer.load_state_dict(st["optimizer"])
            self._gate_moments_to_1d()
            self.scheduler.load_state_dict(st["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {directory} does not match this model and optimizer "
                                  f"({e}); resume with the config that wrote it, or start fresh") from None

    def whole_weights(self):
        """Context in which the trainable weights are whole (nothing to do in one process)."""
        return contextlib.nullcontext()

    def _gate_moments_to_1d(self) -> None:
        """Adam moments of gates saved when the gates were 0-dim, reshaped to the gates' [1]."""
        for p, st in self.optimizer.state.items():
            if p.dim() == 1 and p.numel() == 1:
                for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                    if isinstance(st.get(k), torch.Tensor) and st[k].dim() == 0:
                        st[k] = st[k].reshape(1)

    def broadcast_int(self, x: int) -> int:
        return x

    def barrier(self):
        pass

    def all_reduce_mean(self, x: float) -> float:
        return x


def _patch_deepspeed_shm():
    """Skip DeepSpeed's shm-comm JIT build (60-115 s on CPU); gloo collectives are used instead."""
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def load_ds_config(path: str | None, cfg, on_gpu: bool) -> dict:
    if path is None:
        stage = 0
        ds = {"zero_optimization": {"stage": stage}}
        if on_gpu:
            ds["bf16"] = {"enabled": True}
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"DeepSpeed config {p} not found")
        ds = read_deepspeed_json(p)
    ds = dict(ds)
    ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size   # samples per backward call
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds.pop("train_batch_size", None)
    ds["gradient_clipping"] = float(cfg.train.grad_clip or 0.0)
    if "optimizer" in ds or "scheduler" in ds:
        raise ValueError("the DeepSpeed JSON must not define optimizer/scheduler: the trainer "
                         "passes a client AdamW and a warm-up + cosine schedule")
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def check_ds_config(ds: dict, model, on_gpu: bool, cfg=None) -> None:
    """Refuse settings that cannot work here, before any process group is created."""
    if not on_gpu:
        for k in ("bf16", "fp16"):
            if ds.get(k, {}).get("enabled"):
                raise ValueError(f"{k} is not supported on CPU; use a *_cpu.json DeepSpeed config")
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    zero_dim = [n for n, p in model.named_parameters() if p.dim() == 0]
    if stage == 3 and zero_dim:
        raise NotImplementedError(f"DeepSpeed ZeRO-3 cannot partition 0-dim parameters "
                                  f"({zero_dim[:2]}); give them shape [1]")
    if stage == 3 and cfg is not None:
        _check_zero3_run(cfg)


def _check_zero3_run(cfg) -> None:
    """ZeRO-3 gathers the base's weights collectively in every module call, so every rank must
    run the same calls in the same order: stage 1 with one compression step per micro-step
    (train.bptt truncated, k = 1) and no in-run validation (its forwards differ per rank)."""
    fix = "or use ZeRO stage 0-2 (train/ds_configs/zero{0,1,2}_*.json)"
    if cfg.stage != 1:
        raise ConfigError(f"stage: {cfg.stage} with DeepSpeed ZeRO-3: its samples compress "
                          f"different numbers of segments on each rank, which ZeRO-3's collective "
                          f"weight gathers cannot pair; train stage 2 with ZeRO stage 0-2")
    b = cfg.train.bptt
    if b.get("kind") != "truncated" or b.get("k") != 1:
        raise ConfigError(f"train.bptt={b} with DeepSpeed ZeRO-3: only {{kind: truncated, k: 1}} "
                          f"runs the same compression steps on every rank; set it, {fix}")
    if cfg.train.eval_every:
        raise ConfigError(f"train.eval_every={cfg.train.eval_every} with DeepSpeed ZeRO-3: "
                          f"validation runs a different number of base-model forwards on each "
                          f"rank; set train.eval_every: 0 and evaluate the saved model with "
                          f"`lcirc eval`, {fix}")


class DeepSpeedEngine:
    """DeepSpeed engine around the LCIRC model (frozen base included; only trainable params are
    given to the optimizer)."""

    kind = "deepspeed"

    def __init__(self, model, cfg, scheduler_fn):
        _patch_deepspeed_shm()
        import deepspeed


        on_gpu = torch.cuda.is_available()
        ds = load_ds_config(cfg.distributed.deepspeed_config, cfg, on_gpu)
        check_ds_config(ds, model, on_gpu, cfg)
        backend = cfg.distributed.backend or ("nccl" if on_gpu else "gloo")
        if "MASTER_ADDR" not in os.environ:  # plain single process: make a 1-rank group
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"),
                              RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        deepspeed.init_distributed(dist_backend=backend)
        optimizer = _optimizer(model, cfg)
        scheduler = scheduler_fn(optimizer)
        self.torch_optimizer, self.base_lr = optimizer, cfg.train.lr
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds)
        self.engine.checkpoint_engine = _SafeLoads(self.engine.checkpoint_engine)
        self.model = self.engine.module
        self.rank, self.world = deepspeed.comm.get_rank(), deepspeed.comm.get_world_size()
        self.micro = 0
        self.last_grad_norm = None
        self.zero_stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        # ZeRO reduces each backward's gradients in buckets, which the ranks pair by size: every
        # rank must send all of them, also when a parameter is off its graph (h0 when the step
        # that reads it was not selected, on one rank only), under ZeRO-3 and on several ranks
        self.grads_everywhere = self.zero_stage == 3 or self.world > 1
        if self.zero_stage == 3:
            self._keep_trainable_whole()

    def _keep_trainable_whole(self) -> None:
        """ZeRO-3: the frozen base stays partitioned, except its token embeddings (and the first
        `compressor_input_layers` layers); the trainable LCIRC weights are kept whole on every
        rank (DeepSpeed's persistent parameters, re-gathered after each optimizer step), because
        the compressor, memory projection and gates are read outside module forwards. Their
        gradients and optimizer states are still partitioned."""
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        model = self.model
        keep = [p for p in model.parameters() if p.requires_grad]
        # what compression reads besides them (the token embeddings, the first
        # compressor_input_layers decoder layers), so that compressing any number of segments
        # needs no collective: ranks may compress different numbers of segments
        reads = [model.base.get_input_embeddings().weight]
        for layer in model.adapter.decoder_layers(model.base)[:model.config.compressor_input_layers]:
            reads += list(layer.parameters())
        keep += [p for p in reads if all(p is not q for q in keep)]
        persistent = self.engine.optimizer.persistent_parameters
        known = {id(p) for p in persistent}
        persistent.extend(p for p in keep if id(p) not in known)
        for p in keep:
            p.ds_persist = True
        split = [p for p in keep if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
        if split:
            split[0].all_gather(param_list=split)

    def whole_weights(self):
        """Context in which the trainable weights are whole on every rank. ZeRO-3 keeps them
        whole already; any that are only shards are gathered (a collective: enter it on every
        rank). Parameters that were whole stay whole after the context."""
        split = [p for p in self.model.parameters() if p.requires_grad and is_partitioned(p)]
        if not split:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(split)

    def backward(self, loss):
        # the trainer calls the model, not the engine, so do what the engine's forward does
        # first: a ZeRO optimizer starts a new micro-step here (ZeRO-3 accumulates the
        # gradient partitions across micro-steps only after this)
        reset = getattr(self.engine.optimizer, "clear_backward_seen_flag", None)
        if reset is not None:
            reset()
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        self.micro += 1
        if boundary:
            gn = self.engine.get_global_grad_norm()
            self.last_grad_norm = None if gn is None else float(gn)
        return boundary

    def lr(self) -> float:
        """Current learning rate of the base group (train.lr times the schedule)."""
        return scheduled_lr(self.torch_optimizer, self.base_lr)

    def save(self, directory: Path) -> None:
        """DeepSpeed's own files (model states, one optimizer shard per rank); no client state."""
        self.engine.save_checkpoint(str(directory.parent), tag=directory.name, client_state={},
                                    save_latest=False)

    def load(self, directory: Path) -> None:
        """DeepSpeed's loader, with every file it reads going through :func:`safe_torch_load`
        (and any other torch.load it may call forced to weights_only)."""
        try:
            with weights_only_loads(deepspeed_allowed_types()):
                loaded, _ = self.engine.load_checkpoint(str(directory.parent), tag=directory.name,
                                                        load_optimizer_states=True,
                                                        load_lr_scheduler_states=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"refusing DeepSpeed checkpoint {directory}: a file in it does not "
                                  f"load as plain tensors and allowed types ({torch_load_reason(e)})") from None
        if loaded is None:
            raise CheckpointError(f"DeepSpeed found no model states in checkpoint {directory}")

    def broadcast_int(self, x: int) -> int:
        """Rank 0's `x` on every rank."""
        import deepspeed

        t = torch.tensor([x], dtype=torch.int64, device=self.engine.device)
        deepspeed.comm.broadcast(t, 0)
        return int(t.item())

    def barrier(self):
        import deepspeed

        deepspeed.comm.barrier()

    def all_reduce_mean(self, x: float) -> float:
        import deepspeed

        t = torch.tensor([x], dtype=torch.float64, device=self.engine.device)
        deepspeed.comm.all_reduce(t)
        return float(t.item()) / self.world


def deepspeed_allowed_types() -> tuple:
    """The non-tensor classes DeepSpeed's checkpoint files contain (loss scaler, ZeRO stage,
    fragment addresses); rebuilding them sets plain attributes and runs no other code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)


class _SafeLoads:
    """A DeepSpeed checkpoint engine whose `load` accepts only tensors and allowed types."""

    def __init__(self, inner):
        self._inner = getattr(inner, "_inner", inner)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def load(self, path, map_location=None):
        return safe_torch_load(path, map_location, deepspeed_allowed_types())


def make_engine(model, cfg, scheduler_fn):
    if cfg.distributed.engine == "deepspeed":
        return DeepSpeedEngine(model, cfg, scheduler_fn)
    return PlainEngine(model, cfg, scheduler_fn)
