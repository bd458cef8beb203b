"""Training configuration (YAML) as nested dataclasses; unknown keys are errors."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARAM_GROUPS = ("gca", "gates", "compressor", "mixer")  # optimizer groups (train.lr_mult keys)


@dataclass
class BaseSection:
    name: str = "smollm2"            # smollm2 | tiny_random | path to a Hugging Face Llama dir
    dtype: str = "float32"           # float32 | bfloat16
    tiny: dict = field(default_factory=lambda: dict(vocab_size=256, hidden_size=64,
                                                     intermediate_size=128, num_hidden_layers=2,
                                                     num_attention_heads=4, num_key_value_heads=2))


@dataclass
class LCIRCSection:
    num_latents: int = 64
    compressor_layers: int = 4
    max_segment_len: int = 4096
    segment_len: int = 2048
    gca_layers: list | None = None
    query_dependent: bool = False
    memory_cap: int | None = 3200
    backend: str = "auto"
    pos_emb_std: float | None = None  # re-initialise the position table N(0, std) (None: N(0, 1))
    latents_std: float | None = None  # re-initialise h0 N(0, std) (None: N(0, 1))
    attn_gate_init: float | None = None  # initial GCA attention gate alpha (None: 0, exact base)
    compressor_q_init_scale: float | None = None  # scale the Perceiver's to_q init (sharper attention)
    gca_q_init_scale: float | None = None  # scale the GCA blocks' to_q init
    center_positions: bool = False  # subtract the mean training-token embedding from the position table
    compressor_input_layers: int = 0  # 0: token embeddings (paper); k: frozen LLM hidden states after k layers


@dataclass
class DataSection:
    source: str = "kjv"              # kjv | text_files | token_files | qa_files | hub | synthetic_tokens
    train_path: str | None = None
    val_path: str | None = None
    hub_name: str | None = None
    text_field: str = "text"
    window: int = 4096
    segmenting: str = "random"       # random | fixed
    segment_min: int = 64
    segment_max: int = 4032
    segment_len: int = 2048          # fixed segmenting length and validation segment length
    max_doc_tokens: int | None = None
    qa_context: list = field(default_factory=lambda: [8192, 32768])
    qa_tasks: list = field(default_factory=lambda: ["passkey", "fact", "book"])
    qa_needle: str = "anywhere"      # anywhere | middle: planted needles lie in the compressed middle
    val_docs: int = 16
    val_context: int | None = None   # stage-1 validation length (default 4 * window)
    synthetic_docs: int = 32         # synthetic_tokens: number of documents
    synthetic_len: int = 512         # synthetic_tokens: tokens per document
    cache_dir: str | None = None
    repeat_passage: bool = False     # stage 1 copy task: compress a passage, then predict it again


@dataclass
class TrainSection:
    max_steps: int = 1000            # optimizer steps
    grad_accum: int = 8              # backward calls per optimizer step per rank
    lr: float = 5e-5
    lr_mult: dict = field(default_factory=dict)  # per group: gca | gates | compressor | mixer
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 1.0
    bptt: dict = field(default_factory=lambda: {"kind": "truncated", "k": 1})
    activation_checkpointing: bool = False
    log_every: int = 1
    eval_every: int = 100
    save_every: int = 100
    keep_last: int = 2
    max_minutes: float | None = None


@dataclass
class DistributedSection:
    engine: str = "plain"            # plain | deepspeed
    deepspeed_config: str | None = None
    backend: str | None = None       # gloo | nccl (default: nccl on GPU, gloo on CPU)


@dataclass
class TrainConfig:
    stage: int = 1
    seed: int = 42
    output_dir: str = "runs/lcirc"
    init_from: str | None = None     # LCIRC save_pretrained dir (stage 2 from stage 1)
    base: BaseSection = field(default_factory=BaseSection)
    lcirc: LCIRCSection = field(default_factory=LCIRCSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def validate(self) -> "TrainConfig":
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.train.grad_accum < 1 or self.train.max_steps < 1:
            raise ValueError("train.grad_accum and train.max_steps must be >= 1")
        if self.data.window < 8:
            raise ValueError(f"data.window must be >= 8 tokens, got {self.data.window}")
        if self.distributed.engine not in ("plain", "deepspeed"):
            raise ValueError(f"distributed.engine must be 'plain' or 'deepspeed', got {self.distributed.engine!r}")
        if self.data.segment_max > self.lcirc.max_segment_len:
            raise ValueError(f"data.segment_max={self.data.segment_max} exceeds "
                             f"lcirc.max_segment_len={self.lcirc.max_segment_len}")
        if 2 * self.data.segment_len - 1 > self.lcirc.max_segment_len:
            raise ValueError(f"data.segment_len={self.data.segment_len}: validation segments reach "
                             f"{2 * self.data.segment_len - 1} tokens, more than lcirc.max_segment_len="
                             f"{self.lcirc.max_segment_len}")
        if self.data.qa_needle not in ("anywhere", "middle"):
            raise ValueError(f"data.qa_needle must be 'anywhere' or 'middle', got {self.data.qa_needle!r}")
        if self.data.qa_needle == "middle":
            if self.stage != 2 or self.data.source != "kjv":
                raise ValueError("data.qa_needle='middle' places the needles of the stage-2 synthetic "
                                 f"tasks; it needs stage: 2 and data.source: kjv (got stage {self.stage}, "
                                 f"source {self.data.source!r})")
            if "book" in self.data.qa_tasks:
                raise ValueError("data.qa_needle='middle': the 'book' task plants no needle; "
                                 "use data.qa_tasks from [passkey, fact]")
        if self.data.repeat_passage and self.stage != 1:
            raise ValueError("data.repeat_passage is a stage-1 objective; it needs stage: 1")
        for key in ("compressor_q_init_scale", "gca_q_init_scale"):
            v = getattr(self.lcirc, key)
            if v is not None and not v > 0:
                raise ValueError(f"lcirc.{key} must be > 0, got {v}")
        unknown = sorted(set(self.train.lr_mult) - set(PARAM_GROUPS))
        if unknown:
            raise ValueError(f"train.lr_mult has unknown group(s) {unknown}; groups: {list(PARAM_GROUPS)}")
        if self.base.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"base.dtype must be float32 or bfloat16, got {self.base.dtype!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        sub = fields[k].default_factory if fields[k].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub) and isinstance(sub, type):
            kwargs[k] = _build(sub, v or {}, f"{where}.{k}")
        else:
            kwargs[k] = v
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, data, "config").validate()


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config; `overrides` are "a.b=value" strings (value parsed as YAML)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    data = yaml.safe_load(path.read_text())
    if not data:
        raise ValueError(f"config file {path} is empty")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return config_from_dict(data)
