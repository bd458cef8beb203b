"""Linear read-out of a pass key from the compressed memory: what does the memory hold?

Pass-key samples (KJV haystack, the key sentence wholly in the compressed middle, template
passage_only) are compressed by a model, either one built from a training config as the trainer
builds it (fresh, with its initialisation recipe) or a saved one (`--lcirc DIR`). Ridge
regressions are fitted on the flattened memories of training-book samples; on test-book samples
the report gives, per key position, how often the arg-max of a one-hot regression names the right
digit (`by_pos`, chance about 0.1; a bag of digits without order gives about 0.3), and how often a
per-digit regression says correctly whether a digit occurs in the key (`bag`, against
`bag_majority`, the best constant answer). One JSON line goes to stdout.

    OMP_NUM_THREADS=1 python tools/passkey_readout.py \\
        --config train/configs/smollm2_kjv_passkey_probe.yaml --set lcirc.compressor_input_layers=6
"""
from __future__ import annotations

import argparse
import json
import random
import sys

import torch


def ridge_readout(x_train, y_train, x_test, y_test, lam: float) -> dict:
    """Kernel ridge read-outs on standardised features.

    x_*: float [n, f] features; y_*: int64 [n, P] digits (0-9) per key position.
    Returns {"by_pos": [P accuracies], "bag": accuracy of digit presence, "bag_majority": the
    best constant answer's}."""
    if x_train.shape[0] != y_train.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise ValueError("features and digits must have the same number of rows")
    if x_train.shape[0] < 2 or lam <= 0:
        raise ValueError("need at least 2 training rows and lam > 0")
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    k = a @ a.T
    eye = torch.eye(k.shape[0], dtype=k.dtype)

    def fit(y):
        return a.T @ torch.linalg.solve(k + lam * eye, y)

    by_pos = []
    for j in range(y_train.shape[1]):
        onehot = torch.nn.functional.one_hot(y_train[:, j], 10).to(a.dtype)
        pred = (b @ fit(onehot - onehot.mean(0))).argmax(1)
        by_pos.append((pred == y_test[:, j]).float().mean().item())
    bag_tr = torch.zeros(len(y_train), 10, dtype=a.dtype).scatter_(1, y_train, 1.0)
    bag_te = torch.zeros(len(y_test), 10).scatter_(1, y_test, 1.0).bool()
    prior = bag_tr.mean(0)
    bag_pred = (b @ fit(bag_tr - prior)) > 0.5 - prior
    return {"by_pos": [round(v, 3) for v in by_pos],
            "bag": round((bag_pred == bag_te).float().mean().item(), 3),
            "bag_majority": round(((prior > 0.5) == bag_te).float().mean().item(), 3)}


@torch.no_grad()
def passkey_memories(model, tokenizer, docs, n: int, hay: int, window: int, segment_len: int,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flattened memories float [n, M * d], key digits int64 [n, 5]) of n pass-key samples of
    `hay` haystack tokens from `docs` [(name, ids)], the key in the middle a `window` cut
    compresses (equal segments of ~`segment_len` tokens)."""
    from lcirc_fast.data.qa import SyntheticQA, prepare_training
    from lcirc_fast.data.templates import get_template
    from lcirc_fast.segmenting import balanced_boundaries

    qa = SyntheticQA(tokenizer, docs, tasks=("passkey",), needle_window=window)
    tmpl, rng = get_template("passage_only"), random.Random(seed)
    xs, ys = [], []
    for _ in range(n):
        s = qa.passkey(rng, hay, None, tmpl)
        ht, _ = prepare_training(s, window)
        mid = ht.middle.to(model.device)
        mem = model.compress(mid[None], boundaries=balanced_boundaries(mid.numel(), segment_len))
        x = mem.hidden.reshape(-1).float().cpu()
        if xs and x.numel() != xs[0].numel():
            raise ValueError(f"memories of {hay}-token haystacks differ in size ({x.numel()} vs "
                             f"{xs[0].numel()} values); the read-out needs one size")
        xs.append(x)
        ys.append([int(c) for c in s.answer])
    return torch.stack(xs), torch.tensor(ys)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python tools/passkey_readout.py",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="training YAML: model, window and segments")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--lcirc", default=None, help="a saved model (save_pretrained) instead of a fresh one")
    ap.add_argument("--hay", type=int, default=32, help="haystack tokens per sample")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--lam", type=float, default=100.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.train < 2 or a.test < 1 or a.lam <= 0:
        ap.error("--train must be >= 2, --test >= 1 and --lam > 0")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    from lcirc_fast.data import kjv_splits, tokenize_documents
    from lcirc_fast.models import LCIRCForCausalLM
    from lcirc_fast.models.init_recipe import center_positions
    from lcirc_fast.training.builders import _cache_dir, build_base, build_model
    from lcirc_fast.training.config import load_config

    torch.set_num_threads(a.threads)
    cfg = load_config(a.config, a.set)
    base, tok = build_base(cfg, torch.device("cpu"))
    if tok is None:
        raise SystemExit("the read-out needs a base model with a tokenizer (KJV text)")
    splits = kjv_splits()
    docs = {k: list(zip([n for n, _ in v], tokenize_documents([t for _, t in v], tok, _cache_dir(cfg))))
            for k, v in splits.items() if k in ("train", "test")}
    if a.lcirc:
        model = LCIRCForCausalLM.from_pretrained(a.lcirc, base)
    else:
        model = build_model(cfg, base)
        if cfg.lcirc.init.center_positions and not cfg.init_from:
            center_positions(model, [d for _, d in docs["train"]])
    model.eval()
    seg = model.config.segment_len
    x_tr, y_tr = passkey_memories(model, tok, docs["train"], a.train, a.hay, cfg.data.window, seg, 1)
    x_te, y_te = passkey_memories(model, tok, docs["test"], a.test, a.hay, cfg.data.window, seg, 2)
    rec = {"config": a.config, "set": a.set, "lcirc": a.lcirc, "hay": a.hay,
           **ridge_readout(x_tr, y_tr, x_te, y_te, a.lam)}
    print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
