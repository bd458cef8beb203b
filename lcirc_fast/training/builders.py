"""Build the frozen base, the LCIRC model and the data for a TrainConfig."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import bptt
from ..config import LCIRCConfig
from ..data import SyntheticQA, chunk_documents, kjv_splits, tokenize_documents
from ..data.qa import QASample, build_qa_sample
from ..data.stage1 import repeated_passage_docs
from ..data.templates import TEMPLATES, get_template
from ..errors import ConfigError
from .config import DATA_SOURCES, check_bptt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_base(cfg, device: torch.device):
    """(frozen causal LM in eval mode, tokenizer or None) for `cfg.base` (see `load_base`)."""
    from ..models import load_base

    return load_base(cfg.base.name, DTYPES[cfg.base.dtype], device=device, tiny=cfg.base.tiny,
                     seed=cfg.seed)


def build_model(cfg, base):
    from ..models import LCIRCForCausalLM

    lc = cfg.lcirc
    lcfg = LCIRCConfig(num_latents=lc.num_latents, compressor_layers=lc.compressor_layers,
                       max_segment_len=lc.max_segment_len, segment_len=lc.segment_len,
                       gca_layers=lc.gca_layers, query_dependent=lc.query_dependent,
                       memory_cap=lc.memory_cap, backend=lc.backend,
                       compressor_input_layers=lc.compressor_input_layers)
    torch.manual_seed(cfg.seed + 1)  # identical LCIRC init on every rank
    if cfg.init_from:
        model = _load_partial(cfg.init_from, base, lcfg)
    else:
        model = LCIRCForCausalLM.from_base(base, lcfg)
        if lc.pos_emb_std is not None:
            # N(0, 1) positions drown small token embeddings (SmolLM2: std 0.14) in the
            # compressor's LayerNorm; a smaller table lets the segment's tokens through.
            with torch.no_grad():
                model.compressor.pos_emb.normal_(0.0, float(lc.pos_emb_std))
        if lc.latents_std is not None:
            # h0 of norm ~sqrt(d) dominates the residual stream, so every compressed state stays
            # close to LN(h0) whatever the segment says; small latents let the updates through.
            with torch.no_grad():
                model.latents.normal_(0.0, float(lc.latents_std))
        with torch.no_grad():
            if lc.attn_gate_init is not None:
                # open gates: the memory path carries a content signal from the first step
                for blk in model.gca.values():
                    blk.attn_gate.fill_(float(lc.attn_gate_init))
            if lc.compressor_q_init_scale is not None:
                # default-init queries give near-uniform attention (logit std ~0.3), so every
                # latent holds the same segment average; larger queries make them select tokens
                for layer in model.compressor.layers:
                    layer.attn.to_q.weight.mul_(float(lc.compressor_q_init_scale))
            if lc.gca_q_init_scale is not None:
                for blk in model.gca.values():
                    blk.attn.to_q.weight.mul_(float(lc.gca_q_init_scale))
    return model


def center_positions(model, docs, max_chunks: int = 64) -> torch.Tensor:
    """Subtract the mean compressor input over `docs` from the compressor's position table.

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
    with torch.no_grad():
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


def _load_partial(directory, base, lcfg):
    """Stage 2 from stage 1: load every matching LCIRC weight; a new mixer stays fresh."""
    from ..models import LCIRCForCausalLM
    from ..models.lcirc_llama import WEIGHTS_NAME, read_pretrained_weights

    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no {WEIGHTS_NAME} in {directory}")
    model = LCIRCForCausalLM.from_base(base, lcfg)
    state = read_pretrained_weights(str(path))
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"init_from {directory}: weights {bad[:5]} do not fit this config")
    missing = [k for k in own if k not in state and not k.startswith(("base.", "mixer."))]
    if missing:
        raise ValueError(f"init_from {directory}: this config has weights {missing[:5]} that the "
                         "checkpoint lacks (gca_layers, num_latents or compressor_layers differ?)")
    model.load_state_dict({k: v.to(model.device) for k, v in state.items()}, strict=False)
    return model


def bptt_policy(spec: dict, generator: torch.Generator | None = None):
    """The BPTT policy of a train.bptt mapping (checked by `check_bptt`; ConfigError if bad)."""
    spec = check_bptt(spec)
    kind = spec["kind"]
    if kind == "truncated":
        return bptt.Truncated(spec["k"])
    if kind == "selective":
        return bptt.Selective(spec["n"], generator=generator, replace=spec["replace"],
                              full_when_short=spec["full_when_short"])
    return bptt.Full()


# ---------------------------------------------------------------- data
def synthetic_docs(n_docs: int, length: int, vocab: int, seed: int) -> list[torch.Tensor]:
    """Documents of a random 32-token motif repeated with noise (long-range copy structure)."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n_docs):
        motif = torch.randint(4, vocab, (32,), generator=g)
        d = motif.repeat(length // 32 + 1)[:length].clone()
        noise = torch.rand(length, generator=g) < 0.1
        d[noise] = torch.randint(4, vocab, (int(noise.sum()),), generator=g)
        docs.append(d)
    return docs


def synthetic_qa_sample(rng: random.Random, vocab: int, n: int) -> QASample:
    """Token-space pass key: marker 3, 4 key tokens, marker 3 planted in random tokens; the query
    is [2, 3] and the answer the key."""
    ctx = [rng.randrange(4, vocab) for _ in range(n)]
    key = [rng.randrange(4, vocab) for _ in range(4)]
    pos = rng.randrange(n)
    ctx = ctx[:pos] + [3] + key + [3] + ctx[pos:]
    query = [2, 3]
    prompt = [1] + ctx + query
    ids = torch.tensor(prompt + key, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    labels[len(prompt):] = ids[len(prompt):]
    return QASample(ids, labels, torch.tensor(query), len(prompt), " ".join(map(str, key)), "synthetic",
                    context_start=1)


@dataclass
class DataBundle:
    train_docs: list          # stage 1: token tensors
    val_docs: list            # stage 1: token tensors (>= val_context tokens)
    qa_train: object = None   # stage 2: callable(rng) -> QASample
    qa_val: list = None       # stage 2: fixed QASample list


def _cache_dir(cfg):
    from ..assets import cache_root

    return cfg.data.cache_dir or str(cache_root() / "tokens")


def build_data(cfg, tokenizer, vocab: int) -> DataBundle:
    d = cfg.data
    val_len = d.val_context or 4 * d.window
    src = d.source
    if src not in DATA_SOURCES:
        raise ConfigError(f"data.source = {src!r}: must be one of {', '.join(DATA_SOURCES)}")
    if src == "synthetic_tokens":
        train = synthetic_docs(d.synthetic_docs, d.synthetic_len, vocab, cfg.seed)
        val = synthetic_docs(max(1, d.val_docs), max(d.synthetic_len, val_len), vocab, cfg.seed + 7)
        lo, hi = d.qa_context
        qa_train = lambda rng: synthetic_qa_sample(rng, vocab, rng.randint(lo, hi))  # noqa: E731
        vr = random.Random(123456789)
        qa_val = [synthetic_qa_sample(vr, vocab, vr.randint(lo, hi)) for _ in range(d.val_docs)]
        return DataBundle(train, val, qa_train, qa_val)
    if tokenizer is None:
        raise ConfigError(f"data.source = {src!r} needs a tokenizer, and base.name = {cfg.base.name!r} "
                          "has none; use data.source: synthetic_tokens or a base model with a tokenizer")
    cache = _cache_dir(cfg)
    if src == "kjv":
        splits = kjv_splits()
        named = {k: list(zip([n for n, _ in v], tokenize_documents([t for _, t in v], tokenizer, cache)))
                 for k, v in splits.items()}
        train = chunk_documents([t for _, t in named["train"]], d.max_doc_tokens, min_tokens=2)
        val = chunk_documents([t for _, t in named["validation"]], val_len, min_tokens=val_len)[:d.val_docs]
        if d.repeat_passage:
            # validation scores the second copy of a window-long passage, the first compressed
            val = repeated_passage_docs(val, d.window)
        if cfg.stage == 1:
            return DataBundle(train, val)
        needle_window = d.window if d.qa_needle == "middle" else None
        tr_qa = SyntheticQA(tokenizer, named["train"], d.qa_tasks, needle_window=needle_window)
        va_qa = SyntheticQA(tokenizer, named["validation"], d.qa_tasks, needle_window=needle_window)
        lo, hi = d.qa_context
        qa_train = lambda rng: tr_qa.sample(rng, rng.randint(lo, hi))  # noqa: E731
        vr = random.Random(123456789)
        fixed = get_template("read_answer")
        qa_val = [va_qa.sample(vr, (lo + hi) // 2, template=fixed) for _ in range(d.val_docs)]
        return DataBundle(train, val, qa_train, qa_val)
    from ..data.loaders import load_qa_records, load_text_documents, load_token_documents

    if src in ("text_files", "token_files", "hub"):
        if src == "text_files":
            tr = tokenize_documents(load_text_documents(d.train_path, d.text_field), tokenizer, cache)
            va = tokenize_documents(load_text_documents(d.val_path, d.text_field), tokenizer, cache) if d.val_path else []
        else:
            hub = src == "hub"
            srcname = d.hub_name if hub else d.train_path
            tr = load_token_documents(srcname, "train", d.text_field, hub=hub)
            va = load_token_documents(d.hub_name if hub else d.val_path, "validation", d.text_field, hub=hub) \
                if (hub or d.val_path) else []
        train = chunk_documents(tr, d.max_doc_tokens, min_tokens=2)
        val = chunk_documents(va, val_len, min_tokens=val_len)[:d.val_docs]
        if d.repeat_passage:
            val = repeated_passage_docs(val, d.window)
        return DataBundle(train, val)
    if src == "qa_files":
        recs = load_qa_records(d.train_path)
        vrecs = load_qa_records(d.val_path) if d.val_path else recs[:d.val_docs]
        enc = lambda r, t: build_qa_sample(tokenizer, torch.tensor(  # noqa: E731
            tokenizer(r["context"], add_special_tokens=False).input_ids), r["question"], r["answer"], t)
        open_t = [t for t in TEMPLATES if not t.multiple_choice]
        qa_train = lambda rng: enc(recs[rng.randrange(len(recs))], rng.choice(open_t))  # noqa: E731
        qa_val = [enc(r, get_template("read_answer")) for r in vrecs[:d.val_docs]]
        return DataBundle([], [], qa_train, qa_val)
    raise ConfigError(f"data.source = {src!r} has no reader")
