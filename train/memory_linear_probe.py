"""Linear read-out of a pass key from the compressed memory: what does the memory hold?

Draws pass-key samples as `train/passkey_probe.py` does (key in the compressed middle, KJV
haystack), compresses each middle with a model (freshly initialised with the probe's recipe, or
`--init-from`), and fits ridge regressions on the flattened memory of the training-book samples.
On test-book samples it reports, per key position, how often the arg-max of a one-hot regression
names the right digit (`by_pos`, chance about 0.1; a bag of digits without order gives about 0.3)
and how often a per-digit regression says correctly whether a digit occurs in the key (`bag`,
against `bag_majority`, the best constant answer). One JSON line goes to stdout.

    OMP_NUM_THREADS=1 python train/memory_linear_probe.py --input-layers 6
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

import torch


def _passkey_probe():
    spec = importlib.util.spec_from_file_location("passkey_probe", Path(__file__).with_name("passkey_probe.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ridge_readout(x_train, y_train, x_test, y_test, lam: float) -> dict:
    """x: float [n, f] features; y: int64 [n, 5] key digits. Kernel ridge on standardised x."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    k = a @ a.T
    solve = lambda y: torch.linalg.solve(k + lam * torch.eye(k.shape[0]), y)
    by_pos = []
    for j in range(y_train.shape[1]):
        onehot = torch.nn.functional.one_hot(y_train[:, j], 10).float()
        pred = (b @ (a.T @ solve(onehot - onehot.mean(0)))).argmax(1)
        by_pos.append((pred == y_test[:, j]).float().mean().item())
    bag_tr = torch.zeros(len(y_train), 10).scatter_(1, y_train, 1.0)
    bag_te = torch.zeros(len(y_test), 10).scatter_(1, y_test, 1.0).bool()
    prior = bag_tr.mean(0)
    bag_pred = (b @ (a.T @ solve(bag_tr - prior))) > 0.5 - prior
    return {"by_pos": [round(v, 3) for v in by_pos],
            "bag": round((bag_pred == bag_te).float().mean().item(), 3),
            "bag_majority": round(((prior > 0.5) == bag_te).float().mean().item(), 3)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="memory_linear_probe.py", description=__doc__.split("\n")[0])
    ap.add_argument("--input-layers", type=int, default=0)
    ap.add_argument("--pos-std", type=float, default=0.05)
    ap.add_argument("--compressor-q-scale", type=float, default=8.0)
    ap.add_argument("--init-from", default=None)
    ap.add_argument("--hay", type=int, default=32)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--segment-len", type=int, default=32)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--lam", type=float, default=100.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.train < 2 or a.test < 1:
        ap.error("--train must be >= 2 and --test >= 1")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    from lcirc_fast.segmenting import balanced_boundaries

    torch.set_num_threads(a.threads)
    pp = _passkey_probe()
    _, model, tok, train_docs, test_docs = pp.build_probe(
        seed=0, init_from=a.init_from, window=a.window, segment_len=a.segment_len,
        lcirc={"compressor_input_layers": a.input_layers, "pos_emb_std": a.pos_std,
               "compressor_q_init_scale": a.compressor_q_scale})
    model.eval()

    @torch.no_grad()
    def features(src_docs, n, seed):
        src, rng = pp.KeyInMiddle(tok, src_docs, a.window), random.Random(seed)
        xs, ys = [], []
        for _ in range(n):
            _, _, mid, _, key = src.draw(rng, a.hay)
            mem = model.compress(mid[None], boundaries=balanced_boundaries(mid.numel(), a.segment_len))
            xs.append(torch.cat(mem.slots, 1).reshape(-1).float())
            ys.append([int(c) for c in key])
        return torch.stack(xs), torch.tensor(ys)

    x_tr, y_tr = features(train_docs, a.train, 1)
    x_te, y_te = features(test_docs, a.test, 2)
    rec = {"input_layers": a.input_layers, "pos_std": a.pos_std, "q_scale": a.compressor_q_scale,
           "init_from": a.init_from, **ridge_readout(x_tr, y_tr, x_te, y_te, a.lam)}
    print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
