"""Model shape presets for the benchmarks (random weights, nothing downloaded).

A preset bundles the LLM shape, the LCIRC settings and the inference split (window, segment
length) plus a default list of context lengths for measured sweeps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..config import LCIRCConfig
from ..flops import LCIRCShape, LLMShape


@dataclass(frozen=True)
class Preset:
    """Attributes: llm shape; lcirc = LCIRCConfig keyword arguments; window = LLM window
    (tokens read directly); lengths = default context lengths of a measured sweep."""

    name: str
    llm: LLMShape
    lcirc: dict[str, Any] = field(default_factory=dict)
    window: int = 4096
    lengths: tuple[int, ...] = ()
    hf_json: dict[str, Any] | None = None   # a config.json's fields: its own family is built

    def lcirc_config(self, **overrides) -> LCIRCConfig:
        """Resolved LCIRCConfig for this shape (overrides: any LCIRCConfig field)."""
        kw = {**self.lcirc, **overrides}
        return LCIRCConfig(**kw).resolve(SimpleNamespace(**self.llm.to_hf_dict()))

    def shape(self, query_len: int = 0, **overrides) -> LCIRCShape:
        return LCIRCShape(self.lcirc_config(**overrides), window=self.window, query_len=query_len)

    def hf_config(self, **kw):
        """The LLM's transformers config (kw: extra config arguments): the config.json's own
        family for a preset read from one, else a LlamaConfig of the preset's shape."""
        positions = max([self.window * 2, 8192, *self.lengths])
        if self.hf_json is not None:
            from transformers import AutoConfig

            fields = {k: v for k, v in self.hf_json.items()
                      if k not in ("model_type", "architectures", "transformers_version")}
            fields["max_position_embeddings"] = max(positions,
                                                    fields.get("max_position_embeddings") or 0)
            return AutoConfig.for_model(self.hf_json["model_type"], **{**fields, **kw})
        from transformers import LlamaConfig

        args = {**self.llm.to_hf_dict(), "max_position_embeddings": positions, **kw}
        return LlamaConfig(**args)

    def replace(self, **kw) -> "Preset":
        return dataclasses.replace(self, **kw)


_LLAMA2_7B = LLMShape(4096, 32, 32, 32, 128, 11008, 32000, name="llama2-7b")
_SMOLLM2 = LLMShape(576, 30, 9, 3, 64, 1536, 49152, tie_word_embeddings=True,
                    name="smollm2-135m")

PRESETS: dict[str, Preset] = {
    # The paper's setting: K=64, 4 compressor layers, 12 GCA blocks [0,3,...,30,31].
    "llama2-7b": Preset("llama2-7b", _LLAMA2_7B,
                        dict(num_latents=64, compressor_layers=4, segment_len=2048,
                             max_segment_len=4096),
                        window=4096, lengths=(4096, 8192, 16384, 32768, 65536, 131072)),
    "smollm2-135m": Preset("smollm2-135m", _SMOLLM2,
                           dict(num_latents=64, compressor_layers=4, segment_len=2048,
                                max_segment_len=4096),
                           window=4096, lengths=(4096, 8192, 16384, 32768)),
    # CPU default: SmolLM2's width and heads, 4 layers, an 8K vocab, and the paper's 32:1
    # compression at a scaled window so the crossover falls inside a short sweep; the default
    # lengths reach 8K within the 3-minute budget of `lcirc bench` on 2 cores.
    "cpu-small": Preset("cpu-small",
                        LLMShape(576, 4, 9, 3, 64, 1536, 8192, tie_word_embeddings=True,
                                 name="cpu-small"),
                        dict(num_latents=8, compressor_layers=4, segment_len=256,
                             max_segment_len=512),
                        window=512, lengths=(1024, 2048, 4096, 8192)),
    # Test size: seconds on any CPU.
    "tiny": Preset("tiny", LLMShape(64, 4, 4, 2, 16, 128, 256, name="tiny"),
                   dict(num_latents=4, compressor_layers=2, segment_len=16, max_segment_len=32),
                   window=32, lengths=(32, 64, 128)),
}


def get_preset(name_or_path: str, window: int | None = None,
               segment_len: int | None = None) -> Preset:
    """A built-in preset by name, or a Hugging Face config.json (file or directory).

    A config path gets the paper's LCIRC settings (K=64, 4 layers, 2K segments, 4K window).
    `window` / `segment_len` override the preset's.
    """
    if name_or_path in PRESETS:
        p = PRESETS[name_or_path]
    elif Path(name_or_path).exists():
        llm = LLMShape.from_json(name_or_path)
        p = Preset(llm.name, llm, dict(PRESETS["llama2-7b"].lcirc), window=4096,
                   lengths=PRESETS["llama2-7b"].lengths, hf_json=_config_json(name_or_path))
    else:
        raise ValueError(f"unknown model {name_or_path!r}: use one of {sorted(PRESETS)} or a "
                         f"path to a Hugging Face config.json")
    if window is not None:
        if window < 1:
            raise ValueError(f"--window must be >= 1, got {window}")
        p = p.replace(window=window)
    if segment_len is not None:
        if segment_len < 1:
            raise ValueError(f"--segment-len must be >= 1, got {segment_len}")
        lc = dict(p.lcirc, segment_len=segment_len,
                  max_segment_len=max(p.lcirc.get("max_segment_len", 4096), 2 * segment_len))
        p = p.replace(lcirc=lc)
    return p


def _config_json(path: str) -> dict[str, Any]:
    """The fields of a Hugging Face config.json (file or directory; read and checked already by
    `LLMShape.from_json`), its `model_type` named by `BASE_ADAPTERS` (ConfigError otherwise)."""
    import json

    from ..models.base_adapter import adapter_for_type

    p = Path(path)
    data = json.loads((p / "config.json" if p.is_dir() else p).read_text(encoding="utf-8"))
    adapter_for_type(data.get("model_type", "llama"))
    return {"model_type": "llama", **data}
