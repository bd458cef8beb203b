"""Build the frozen base, the LCIRC model and the data for a TrainConfig."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import bptt
from ..data import SyntheticQA, chunk_documents, kjv_splits, tokenize_documents
from ..data.qa import QASample, build_qa_sample
from ..data.stage1 import repeated_passage_docs
from ..data.templates import TEMPLATES, get_template
from ..data.truncation import head_tail_sizes
from ..errors import ConfigError
from .config import DATA_SOURCES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_base(cfg, device: torch.device):
    """(frozen causal LM in eval mode, tokenizer or None) for `cfg.base` (see `load_base`)."""
    from ..models import load_base

    return load_base(cfg.base.name, DTYPES[cfg.base.dtype], device=device, tiny=cfg.base.tiny,
                     seed=cfg.seed)


def build_model(cfg, base):
    """The LCIRC model of `cfg.lcirc` around `base` (from `cfg.init_from` when set); the same
    initial weights on every rank."""
    from ..models import LCIRCForCausalLM

    torch.manual_seed(cfg.seed + 1)  # identical LCIRC init on every rank
    if cfg.init_from:
        return _load_partial(cfg.init_from, base, cfg.lcirc)
    return LCIRCForCausalLM.from_base(base, cfg.lcirc)


def _load_partial(directory, base, lcfg):
    """Stage 2 from stage 1: load every matching LCIRC weight; a new mixer stays fresh."""
    from ..models import LCIRCForCausalLM
    from ..models.pretrained import WEIGHTS_NAME, read_pretrained_weights

    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no {WEIGHTS_NAME} in {directory}")
    model = LCIRCForCausalLM.from_base(base, lcfg)
    state = read_pretrained_weights(str(path))
    own = model.lcirc_state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"init_from {directory}: weights {bad[:5]} do not fit this config")
    missing = [k for k in own if k not in state and not k.startswith("mixer.")]
    if missing:
        raise ValueError(f"init_from {directory}: this config has weights {missing[:5]} that the "
                         "checkpoint lacks (gca_layers, num_latents or compressor_layers differ?)")
    model.load_state_dict({k: v.to(model.device) for k, v in state.items()}, strict=False)
    return model


def bptt_policy(spec: dict, generator: torch.Generator | None = None):
    """The BPTT policy of a train.bptt mapping (`bptt.from_spec`; ConfigError if bad)."""
    return bptt.from_spec(spec, generator, key="train.bptt")


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


def synthetic_qa_sample(rng: random.Random, vocab: int, n: int, window: int | None = None) -> QASample:
    """Token-space pass key: marker 3, 4 key tokens, marker 3 planted in n random tokens; the
    query is [2, 3] and the answer the key. With `window`, the needle lies wholly in the middle
    that a head + tail cut to `window` tokens compresses."""
    ctx = [rng.randrange(4, vocab) for _ in range(n)]
    key = [rng.randrange(4, vocab) for _ in range(4)]
    if window is None:
        pos = rng.randrange(n)
    else:
        head, tail = head_tail_sizes(window)
        lo, hi = max(0, head - 1), n + 6 - tail    # 1 + pos >= head, 1 + pos + 6 <= n + 13 - tail
        if lo > hi:
            raise ValueError(f"a synthetic pass key in {n} context tokens cannot lie in the compressed "
                             f"middle of a {window}-token window; use longer contexts (data.qa_context)")
        pos = rng.randint(lo, hi)
    ctx = ctx[:pos] + [3] + key + [3] + ctx[pos:]
    query = [2, 3]
    prompt = [1] + ctx + query
    ids = torch.tensor(prompt + key, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    labels[len(prompt):] = ids[len(prompt):]
    return QASample(ids, labels, torch.tensor(query), len(prompt), " ".join(map(str, key)), "synthetic",
                    context_start=1)


def hay_at(schedule: list | None, step: int) -> int | None:
    """Context tokens of `data.hay_schedule` ([[tokens, from_step], ...]) at optimizer `step`;
    None without a schedule."""
    if not schedule:
        return None
    return [n for n, at in schedule if at <= step][-1]


@dataclass
class DataBundle:
    train_docs: list          # stage 1: token tensors
    val_docs: list            # stage 1: token tensors (>= val_context tokens)
    qa_train: object = None   # stage 2: callable(rng, n=None) -> QASample (n context tokens,
                              # drawn from data.qa_context when None)
    qa_val: list = None       # stage 2: fixed QASample list
    qa_val_lengths: list = None  # stage 2: the context length each qa_val sample was made with


def _cache_dir(cfg):
    from ..assets import cache_root

    return cfg.data.cache_dir or str(cache_root() / "tokens")


def _val_lengths(d) -> list[int]:
    """Stage-2 validation context lengths (see data.qa_val_lengths)."""
    if d.qa_val_lengths:
        return list(d.qa_val_lengths)
    if d.hay_schedule:
        return [d.hay_schedule[-1][0]]
    lo, hi = d.qa_context
    return [(lo + hi) // 2]


def _context_ids(record: dict, tokenizer) -> torch.Tensor:
    """int64 [n]: a QA record's context tokens (FineWeb-LQA stores ids; text is tokenised)."""
    if record.get("context_ids") is not None:
        return record["context_ids"]
    return torch.tensor(tokenizer(record["context"], add_special_tokens=False).input_ids)


def _short_answers(records: list, tokenizer, limit: int | None) -> list:
    """The records whose answer is at most `limit` tokens (all when None); DataError if none is."""
    if limit is None:
        return records
    from ..errors import DataError

    kept = [r for r in records if len(tokenizer(" " + r["answer"].strip(), add_special_tokens=False).input_ids)
            <= limit]
    if records and not kept:
        raise DataError(f"every QA record's answer is longer than data.max_answer_tokens = {limit} tokens; "
                        "raise the limit or check the data")
    return kept


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
        win = d.window if d.qa_needle == "middle" else None

        def qa_train(rng, n=None):
            return synthetic_qa_sample(rng, vocab, rng.randint(lo, hi) if n is None else n, win)

        vr = random.Random(123456789)
        if d.qa_val_lengths:
            lengths = [n for n in d.qa_val_lengths for _ in range(d.val_docs)]
            qa_val = [synthetic_qa_sample(vr, vocab, n, win) for n in lengths]
        elif d.hay_schedule:
            lengths = [d.hay_schedule[-1][0]] * d.val_docs
            qa_val = [synthetic_qa_sample(vr, vocab, n, win) for n in lengths]
        else:   # lengths drawn as in training
            qa_val, lengths = [], []
            for _ in range(d.val_docs):
                qa_val.append(synthetic_qa_sample(vr, vocab, vr.randint(lo, hi), win))
                lengths.append(f"{lo}-{hi}")
        return DataBundle(train, val, qa_train, qa_val, lengths)
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
        tmpl = get_template(d.qa_template) if d.qa_template else None

        def qa_train(rng, n=None):
            return tr_qa.sample(rng, rng.randint(lo, hi) if n is None else n, template=tmpl)

        vr = random.Random(123456789)
        fixed = tmpl or get_template("read_answer")
        lengths = [n for n in _val_lengths(d) for _ in range(d.val_docs)]
        qa_val = [va_qa.sample(vr, n, template=fixed) for n in lengths]
        return DataBundle(train, val, qa_train, qa_val, lengths)
    from ..data.loaders import load_qa_records, load_text_documents, load_token_documents

    if src in ("text_files", "token_files", "hub") and cfg.stage == 1:
        if src == "text_files":
            tr = tokenize_documents(load_text_documents(d.train_path, d.text_field), tokenizer, cache)
            va = (tokenize_documents(load_text_documents(d.val_path, d.text_field), tokenizer, cache)
                  if d.val_path else [])
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
    if src == "qa_files" or (src == "hub" and cfg.stage == 2):
        hub = src == "hub"
        recs = _short_answers(load_qa_records(d.hub_name if hub else d.train_path, hub=hub), tokenizer,
                              d.max_answer_tokens)
        vrecs = (load_qa_records(d.hub_name if hub else d.val_path, "validation", hub=hub)
                 if hub or d.val_path else recs[:d.val_docs])
        vrecs = _short_answers(vrecs, tokenizer, d.max_answer_tokens)
        enc = lambda r, t: build_qa_sample(tokenizer, _context_ids(r, tokenizer),  # noqa: E731
                                           r["question"], r["answer"], t)
        open_t = [t for t in TEMPLATES if not t.multiple_choice]
        qa_train = lambda rng, n=None: enc(recs[rng.randrange(len(recs))], rng.choice(open_t))  # noqa: E731
        qa_val = [enc(r, get_template("read_answer")) for r in vrecs[:d.val_docs]]
        return DataBundle([], [], qa_train, qa_val, ["files"] * len(qa_val))
    raise ConfigError(f"data.source = {src!r} has no reader")
