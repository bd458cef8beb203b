"""Import / export of the reference implementation's checkpoint layout.

The reference `.pt` file is a dict with `compressor_state_dict`, `Xattn_layers_state_dict`
(blocks 0..J-1 in GCA-layer order), `latent_state_dict` ({'latent': [K, d]}) and, for QD,
`mixer_state_dict`. Names are mapped with the fixed tables below, never by position.
"""
from __future__ import annotations

import os
import re

import torch

from ..errors import CheckpointError
from ..modules.gca import GATE_NAMES as _GATES

# reference compressor key (per layer i) -> ours
_COMPRESSOR_LAYER = {
    "0.norm_x.weight": "attn.norm_x.weight", "0.norm_x.bias": "attn.norm_x.bias",
    "0.norm_latents.weight": "attn.norm_latents.weight",
    "0.norm_latents.bias": "attn.norm_latents.bias",
    "0.to_q.weight": "attn.to_q.weight", "0.to_kv.weight": "attn.to_kv.weight",
    "0.to_out.weight": "attn.to_out.weight",
    "1.0.weight": "ff.norm.weight", "1.0.bias": "ff.norm.bias",
    "1.1.weight": "ff.w1.weight", "1.3.weight": "ff.w2.weight",
}
_COMPRESSOR_TOP = {"pos_emb": "pos_emb", "norm.weight": "norm.weight", "norm.bias": "norm.bias"}
# reference GCA block key -> ours
_GCA = {
    "attn_gate": "attn_gate", "ff_gate": "ff_gate",
    "attn.norm.weight": "attn.norm.weight", "attn.norm.bias": "attn.norm.bias",
    "attn.to_q.weight": "attn.to_q.weight", "attn.to_kv.weight": "attn.to_kv.weight",
    "attn.to_out.weight": "attn.to_out.weight",
    "ff.0.weight": "ff.norm.weight", "ff.0.bias": "ff.norm.bias",
    "ff.1.weight": "ff.w1.weight", "ff.3.weight": "ff.w2.weight",
}
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
_BLOCK_RE = re.compile(r"^(\d+)\.(.+)$")


def _map_compressor(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k in _COMPRESSOR_TOP:
            out[_COMPRESSOR_TOP[k]] = v
            continue
        m = _LAYER_RE.match(k)
        if not m or m.group(2) not in _COMPRESSOR_LAYER:
            raise KeyError(f"unknown key in compressor_state_dict: {k!r}")
        out[f"layers.{m.group(1)}.{_COMPRESSOR_LAYER[m.group(2)]}"] = v
    return out


def _map_block(sd: dict, where: str) -> dict:
    """Reference block keys -> ours; the reference's 0-dim gates become our [1]-shaped ones."""
    out = {}
    for k, v in sd.items():
        if k not in _GCA:
            raise KeyError(f"unknown key in {where}: {k!r}")
        if k in _GATES and isinstance(v, torch.Tensor) and v.dim() == 0:
            v = v.reshape(1)
        out[_GCA[k]] = v
    return out


def _export_block(block) -> dict:
    """One GCA block in the reference layout (gates as 0-dim fp32 tensors)."""
    inv_gca = {v: k for k, v in _GCA.items()}
    return {inv_gca[k]: (v.detach().reshape(()) if k in _GATES else v.detach()).clone()
            for k, v in block.state_dict().items()}


def _load_into(module: torch.nn.Module, mapped: dict, where: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(mapped))
    extra = sorted(set(mapped) - set(own))
    if missing or extra:
        raise CheckpointError(f"{where}: checkpoint does not match this model: missing "
                              f"{missing[:5]}, unexpected {extra[:5]}")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(own[k].shape):
            hint = ""
            if k == "pos_emb":
                hint = (f" (set LCIRCConfig.max_segment_len={v.shape[0]} to match the reference "
                        f"position table)")
            raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)} in the checkpoint but "
                                  f"{tuple(own[k].shape)} in this model{hint}")
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(mapped[k].to(t.dtype))


def _where(path) -> str:
    return "the given checkpoint dict" if isinstance(path, dict) else os.fspath(path)


def _read_checkpoint(path) -> dict:
    """torch.load with weights_only=True (tensors and containers only, no code)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}; pass the reference implementation's "
                                f".pt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for unreadable files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint ({first}); the file "
                              f"is truncated, corrupt, or holds objects other than "
                              f"tensors") from None


def load_official_checkpoint(model, path: str | os.PathLike) -> None:
    """Load a reference `.pt` checkpoint (or an already-loaded dict) into `model`, in place."""
    if isinstance(path, dict):
        ckpt = path
    else:
        ckpt = _read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{_where(path)} is not a reference LCIRC checkpoint: it holds a "
                              f"{type(ckpt).__name__}, not a dict of state dicts")
    for key in ("compressor_state_dict", "Xattn_layers_state_dict", "latent_state_dict"):
        if key not in ckpt:
            raise KeyError(f"not a reference LCIRC checkpoint: no {key!r} (keys: {sorted(ckpt)})")
    _load_into(model.compressor, _map_compressor(ckpt["compressor_state_dict"]), "compressor")
    blocks: dict[int, dict] = {}
    for k, v in ckpt["Xattn_layers_state_dict"].items():
        m = _BLOCK_RE.match(k)
        if not m:
            raise KeyError(f"unknown key in Xattn_layers_state_dict: {k!r}")
        blocks.setdefault(int(m.group(1)), {})[m.group(2)] = v
    layers = model.config.gca_layers
    if sorted(blocks) != list(range(len(layers))):
        raise CheckpointError(f"checkpoint has GCA blocks {sorted(blocks)} but this model has "
                              f"{len(layers)} (before decoder layers {layers})")
    for j, layer in enumerate(layers):
        _load_into(model.gca[str(layer)], _map_block(blocks[j], f"Xattn block {j}"),
                   f"GCA block {j} (layer {layer})")
    latent = ckpt["latent_state_dict"].get("latent")
    if latent is None or tuple(latent.shape) != tuple(model.latents.shape):
        raise CheckpointError(f"latent_state_dict['latent'] has shape "
                              f"{None if latent is None else tuple(latent.shape)}, expected "
                              f"{tuple(model.latents.shape)}")
    with torch.no_grad():
        model.latents.copy_(latent.to(model.latents.dtype))
    has_mixer = "mixer_state_dict" in ckpt
    if has_mixer != (model.mixer is not None):
        raise CheckpointError("checkpoint is " + ("QD-LCIRC (has a mixer)" if has_mixer else
                                                 "plain LCIRC (no mixer)") +
                              " but the model is " + ("QD-LCIRC" if model.mixer is not None
                                                      else "plain LCIRC"))
    if has_mixer:
        _load_into(model.mixer, _map_block(ckpt["mixer_state_dict"], "mixer_state_dict"),
                   "mixer")


def export_official_state(model) -> dict:
    """The model's weights in the reference layout (a dict ready for `torch.save`)."""
    inv_layer = {v: k for k, v in _COMPRESSOR_LAYER.items()}
    comp = {}
    for k, v in model.compressor.state_dict().items():
        if k in _COMPRESSOR_TOP.values():
            comp[k] = v.detach().clone()
        else:
            m = _LAYER_RE.match(k)
            comp[f"layers.{m.group(1)}.{inv_layer[m.group(2)]}"] = v.detach().clone()
    xattn = {}
    for j, layer in enumerate(model.config.gca_layers):
        for k, v in _export_block(model.gca[str(layer)]).items():
            xattn[f"{j}.{k}"] = v
    out = {"compressor_state_dict": comp, "Xattn_layers_state_dict": xattn,
           "latent_state_dict": {"latent": model.latents.detach().clone()}, "epoch": 0}
    if model.mixer is not None:
        out["mixer_state_dict"] = _export_block(model.mixer)
    return out
