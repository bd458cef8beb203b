"""The initialisation recipe (`lcirc_fast.config.InitRecipe`) applied to a built model.

`apply_init` runs once when a model is constructed, after the modules' default initialisation;
`center_positions` is the recipe's data-dependent part, applied once training documents exist.
"""
from __future__ import annotations

import torch

from ..config import InitRecipe


@torch.no_grad()
def apply_init(model, recipe: InitRecipe) -> None:
    """Re-draw / rescale the trainable parts of `model` as `recipe` says (in this order, so a
    seeded build draws the same numbers every time):

    1. `pos_emb_std`: position table N(0, std). N(0, 1) positions drown small token embeddings
       (SmolLM2: std 0.14) in the compressor's LayerNorm; a smaller table lets the tokens through.
    2. `latents_std`: h0 N(0, std). An h0 of norm ~sqrt(d) dominates the residual stream, so every
       compressed state stays close to LN(h0); small latents let the segment's updates through.
    3. `attn_gate_init`: open GCA attention gates, so the memory path carries signal from step 1.
    4. `compressor_q_init_scale` / `gca_q_init_scale`: default-init queries give near-uniform
       attention (logit std ~0.3), so every latent holds the same segment average; larger queries
       make latents select tokens.
    """
    if recipe.pos_emb_std is not None:
        model.compressor.pos_emb.normal_(0.0, recipe.pos_emb_std)
    if recipe.latents_std is not None:
        model.latents.normal_(0.0, recipe.latents_std)
    if recipe.attn_gate_init is not None:
        for blk in model.gca.values():
            blk.attn_gate.fill_(recipe.attn_gate_init)
    if recipe.compressor_q_init_scale is not None:
        for layer in model.compressor.layers:
            layer.attn.to_q.weight.mul_(recipe.compressor_q_init_scale)
    if recipe.gca_q_init_scale is not None:
        for blk in model.gca.values():
            blk.attn.to_q.weight.mul_(recipe.gca_q_init_scale)


@torch.no_grad()
def center_positions(model, docs, max_chunks: int = 64) -> torch.Tensor:
    """Subtract the mean compressor input over `docs` (1-D token tensors) from the position table.

    The compressor normalises Embed(t) + P; token embeddings share a large common component
    (SmolLM2 on KJV: mean norm 0.86 against row norms of about 3), which every latent then
    carries alike. Folding -mean into P centres the input at no cost. With token embeddings
    the mean is exact (token counts); with contextual input (`compressor_input_layers` > 0) it
    is taken over up to `max_chunks` evenly spaced segments. Returns the mean [d].
    """
    ids = torch.cat([d.reshape(-1) for d in docs])
    if ids.numel() == 0:
        raise ValueError("center_positions needs training tokens")
    emb = model.base.get_input_embeddings().weight
    if model.config.compressor_input_layers == 0:
        counts = torch.bincount(ids, minlength=emb.shape[0]).to(emb.dtype)
        scale = model.adapter.input_scale(model.base.config)   # Gemma: sqrt(d)
        mean = (counts @ emb) / counts.sum() * scale
    else:
        length = min(model.config.segment_len, ids.numel())
        n = min(max_chunks, ids.numel() // length)
        starts = torch.linspace(0, ids.numel() - length, n).long()
        chunks = torch.stack([ids[i:i + length] for i in starts.tolist()]).to(model.device)
        mean = model.segment_inputs(chunks).float().mean((0, 1)).to(emb.dtype)
    model.compressor.pos_emb.sub_(mean.to(model.compressor.pos_emb.dtype))
    return mean
