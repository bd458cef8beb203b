"""An independent, literal re-statement of the LCIRC math over the reference checkpoint layout.

It reads the official state-dict names directly (no lcirc_fast modules) and follows the method
notes step by step: per-layer LayerNorms, `to_kv` split into K (first half) and V, einsum
attention with the row max subtracted, GCA before the listed decoder layers.
"""
import torch
import torch.nn.functional as F


def _ln(x, sd, prefix, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _mha(q, k, v, heads):
    b, n, inner = q.shape
    dh = inner // heads
    q = q.view(b, n, heads, dh).transpose(1, 2) * dh ** -0.5
    k = k.view(b, k.shape[1], heads, dh).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, dh).transpose(1, 2)
    sim = torch.einsum("bhid,bhjd->bhij", q, k)
    sim = sim - sim.amax(dim=-1, keepdim=True).detach()
    attn = sim.softmax(dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", attn, v)
    return out.transpose(1, 2).reshape(b, n, inner)


def perceiver(sd, z, e, num_layers, heads):
    """One compressor call: z [B, K, d] state, e [B, L, d] segment embeddings."""
    x = e + sd["pos_emb"][: e.shape[1]]
    for i in range(num_layers):
        p = f"layers.{i}."
        xn = _ln(x, sd, p + "0.norm_x")
        zn = _ln(z, sd, p + "0.norm_latents")
        q = zn @ sd[p + "0.to_q.weight"].T
        kv = xn @ sd[p + "0.to_kv.weight"].T
        k, v = kv.chunk(2, dim=-1)
        z = z + _mha(q, k, v, heads) @ sd[p + "0.to_out.weight"].T
        h = _ln(z, sd, p + "1.0")
        z = z + F.silu(h @ sd[p + "1.1.weight"].T) @ sd[p + "1.3.weight"].T
    return _ln(z, sd, "norm")


def gca(sd, x, mem, heads, prefix=""):
    """One GCA block over memory `mem` (no LN on the memory side)."""
    g = lambda k: sd[prefix + k]  # noqa: E731
    q = F.layer_norm(x, (x.shape[-1],), g("attn.norm.weight"), g("attn.norm.bias"), 1e-5)
    q = q @ g("attn.to_q.weight").T
    k, v = (mem @ g("attn.to_kv.weight").T).chunk(2, dim=-1)
    x = x + torch.tanh(g("attn_gate")) * (_mha(q, k, v, heads) @ g("attn.to_out.weight").T)
    h = F.layer_norm(x, (x.shape[-1],), g("ff.0.weight"), g("ff.0.bias"), 1e-5)
    return x + torch.tanh(g("ff_gate")) * (F.silu(h @ g("ff.1.weight").T) @ g("ff.3.weight").T)


def compress(ckpt, embed, ids, bounds, num_layers, heads, query_ids=None):
    """Memory [B, S*K, d] for token ids [B, N] cut at `bounds`."""
    comp = ckpt["compressor_state_dict"]
    h = ckpt["latent_state_dict"]["latent"][None].expand(ids.shape[0], -1, -1)
    outs = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if query_ids is not None:
            h = gca(ckpt["mixer_state_dict"], h, embed(query_ids), heads)
        h = perceiver(comp, h, embed(ids[:, lo:hi]), num_layers, heads)
        outs.append(h)
    return torch.cat(outs, dim=1)


def logits(ckpt, base, ids, memory, gca_layers, heads):
    """Llama forward with GCA block j applied before decoder layer gca_layers[j]."""
    lm = base.model
    x = lm.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    rope = lm.rotary_emb(x, position_ids=pos)
    xs = ckpt["Xattn_layers_state_dict"]
    for i, layer in enumerate(lm.layers):
        if i in gca_layers:
            x = gca(xs, x, memory, heads, prefix=f"{gca_layers.index(i)}.")
        x = layer(x, attention_mask=None, position_ids=pos, position_embeddings=rope)
        x = x[0] if isinstance(x, tuple) else x
    return base.lm_head(lm.norm(x))
