"""Pass-key probe: can the compressed memory carry a 5-digit key to the answer?

Every sample is a KJV haystack with the pass-key sentence planted inside it, in the
"passage_only" template that `lcirc eval passkey` uses. The LLM reads head + tail of `--window`
tokens; the key always lies in the compressed middle. Each step trains on `--batch` samples of
`--hay` haystack tokens (answer-only loss); `--hay 32@0,96@200` is a curriculum (32 tokens from
step 0, 96 from step 200). Every `--eval-every` steps, `--eval-samples` fixed test-book samples of
each `--eval-hay` length are scored teacher-forced with their own memory and with another
sample's memory: `digit_acc` is the share of key digits whose arg-max is right given the gold
digits before it (chance 0.1; `by_pos` per key position), `in_key` the share of arg-max digits
that occur anywhere in the key (order ignored), `exact` the share of samples whose whole answer
is the arg-max (the greedy answer then equals the key). One JSON line per evaluation goes to stdout;
`--save DIR` writes the final model for `lcirc eval passkey --lcirc DIR`.

    OMP_NUM_THREADS=1 python train/passkey_probe.py --steps 200 --hay 32 --eval-hay 32,96
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time

import torch


def parse_schedule(spec: str) -> list[tuple[int, int]]:
    """'32@0,96@200' (or '32') -> [(0, 32), (200, 96)], sorted by start step."""
    out = []
    for part in spec.split(","):
        n, _, at = part.strip().partition("@")
        try:
            n_i, at_i = int(n), int(at or 0)
        except ValueError:
            raise ValueError(f"bad --hay entry {part!r}: expected TOKENS or TOKENS@STEP") from None
        if n_i < 1 or at_i < 0:
            raise ValueError(f"bad --hay entry {part!r}: tokens must be >= 1 and step >= 0")
        out.append((at_i, n_i))
    out.sort()
    if out[0][0] != 0:
        raise ValueError(f"--hay {spec!r} must give a length from step 0")
    return out


def hay_at(schedule: list[tuple[int, int]], step: int) -> int:
    return [n for at, n in schedule if at <= step][-1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="passkey_probe.py", description=__doc__.split("\n")[0])
    ap.add_argument("--gca", default="2,5,8,12", help="decoder layers that get a GCA block")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--compressor-lr-mult", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--window", type=int, default=64, help="LLM window (head + tail of the prompt)")
    ap.add_argument("--hay", default="32", help="haystack tokens per sample, or a curriculum N@STEP,...")
    ap.add_argument("--segment-len", type=int, default=32)
    ap.add_argument("--latents", type=int, default=32)
    ap.add_argument("--compressor-layers", type=int, default=2)
    ap.add_argument("--input-layers", type=int, default=0,
                    help="compressor input: 0 token embeddings, k the frozen LLM's hidden states after k layers")
    ap.add_argument("--query-dependent", action="store_true", help="QD-LCIRC (question fed to the mixer)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-hay", default="32", help="haystack lengths scored at each evaluation")
    ap.add_argument("--eval-samples", type=int, default=32)
    ap.add_argument("--gate-init", type=float, default=0.5)
    ap.add_argument("--compressor-q-scale", type=float, default=8.0)
    ap.add_argument("--gca-q-scale", type=float, default=4.0)
    ap.add_argument("--no-center-positions", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init-from", default=None,
                    help="start from a saved model (its architecture flags must match; no re-centring)")
    ap.add_argument("--save", default=None, help="directory for the final model (save_pretrained)")
    ap.add_argument("--cache-dir", default=None, help="tokenisation cache")
    a = ap.parse_args(argv)
    try:
        a.schedule = parse_schedule(a.hay)
        a.eval_lengths = [n for _, n in parse_schedule(a.eval_hay)]
    except ValueError as e:
        ap.error(str(e))
    if a.batch < 2:
        ap.error("--batch must be >= 2 (the swapped control uses another sample's memory)")
    if a.eval_samples < 2:
        ap.error("--eval-samples must be >= 2")
    return a


class KeyInMiddle:
    """Pass-key samples whose key lies wholly in the compressed middle of a `window` cut.

    draw(rng, n) -> (llm_ids int64 [window], labels int64 [window], middle int64 [m],
    query_ids int64 [q], key str); with one template and n fixed, every shape is fixed too.
    """

    def __init__(self, tokenizer, docs, window: int):
        from lcirc_fast.data.qa import SyntheticQA, prepare_training
        from lcirc_fast.data.templates import get_template

        self.qa = SyntheticQA(tokenizer, docs, tasks=("passkey",))
        self.tmpl = get_template("passage_only")
        self.window = window
        self.prepare = prepare_training

    def draw(self, rng: random.Random, n: int, tries: int = 200):
        for _ in range(tries):
            s = self.qa.passkey(rng, n, None, self.tmpl)
            ht, labels = self.prepare(s, self.window)
            key = [int(t) for t in s.input_ids[s.prompt_len + 1:].tolist()]
            if ht.truncated and _count(ht.middle.tolist(), key) == 2:
                return ht.llm_ids, labels, ht.middle, s.query_ids, s.answer
        raise ValueError(f"no sample with the key in the compressed middle after {tries} tries: "
                         f"{n} haystack tokens are too few for a {self.window}-token window")


def _count(seq: list[int], sub: list[int]) -> int:
    k = len(sub)
    return sum(seq[i:i + k] == sub for i in range(len(seq) - k + 1))


def batch(samples):
    ids, labels, mid, q, keys = zip(*samples)
    return torch.stack(ids), torch.stack(labels), torch.stack(mid), torch.stack(q), list(keys)


def build_probe(*, seed: int, init_from: str | None, window: int, segment_len: int, lcirc: dict,
                train: dict | None = None, cache_dir: str | None = None):
    """The probes' SmolLM2 + LCIRC model and KJV documents.

    `lcirc` adds to / overrides the training-config section (32 latents, 2 Perceiver layers,
    GCA before 2, 5, 8, 12, h0 N(0, 0.02^2), no memory cap); segments are fixed at
    `segment_len`. Positions are centred on the training books unless the model comes from
    `init_from` (already centred) or `lcirc["center_positions"]` is false.
    Returns (cfg, model, tokenizer, train_docs, test_docs), docs as [(book, int64 ids)].
    """
    from lcirc_fast.assets import load_smollm2
    from lcirc_fast.data import kjv_splits, tokenize_documents
    from lcirc_fast.config import InitRecipe
    from lcirc_fast.models.init_recipe import center_positions
    from lcirc_fast.training.builders import build_model
    from lcirc_fast.training.config import config_from_dict

    section = {"num_latents": 32, "compressor_layers": 2, "gca_layers": [2, 5, 8, 12],
               "max_segment_len": max(128, segment_len), "segment_len": segment_len,
               "memory_cap": None, **lcirc}
    init_keys = {f.name for f in dataclasses.fields(InitRecipe)}
    section["init"] = {"latents_std": 0.02, "center_positions": True,
                       **{k: section.pop(k) for k in list(section) if k in init_keys}}
    cfg = config_from_dict({
        "stage": 2, "seed": seed, "init_from": init_from, "lcirc": section,
        "data": {"window": window, "segmenting": "fixed", "segment_min": segment_len,
                 "segment_max": segment_len},
        **({"train": train} if train else {})})
    base, tok = load_smollm2(torch.float32)
    model = build_model(cfg, base)
    splits = kjv_splits()

    def docs(split):
        names = [n for n, _ in splits[split]]
        return list(zip(names, tokenize_documents([t for _, t in splits[split]], tok, cache_dir)))

    train_docs, test_docs = docs("train"), docs("test")
    if cfg.lcirc.init.center_positions and not init_from:
        center_positions(model, [d for _, d in train_docs])
    return cfg, model, tok, train_docs, test_docs


def main(argv=None) -> int:
    a = parse_args(argv)
    from lcirc_fast.segmenting import balanced_boundaries
    from lcirc_fast.training.engine import param_groups

    torch.set_num_threads(a.threads)
    cfg, model, tok, train_docs, test_docs = build_probe(
        seed=a.seed, init_from=a.init_from, window=a.window, segment_len=a.segment_len,
        cache_dir=a.cache_dir,
        lcirc={"num_latents": a.latents, "compressor_layers": a.compressor_layers,
               "gca_layers": [int(x) for x in a.gca.split(",")], "query_dependent": a.query_dependent,
               "compressor_input_layers": a.input_layers, "pos_emb_std": 0.05,
               "attn_gate_init": a.gate_init, "compressor_q_init_scale": a.compressor_q_scale,
               "gca_q_init_scale": a.gca_q_scale, "center_positions": not a.no_center_positions},
        train={"lr": a.lr, "lr_mult": {"compressor": a.compressor_lr_mult}, "weight_decay": 0.0})
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=a.lr, weight_decay=0.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    train_src = KeyInMiddle(tok, train_docs, a.window)
    test_src = KeyInMiddle(tok, test_docs, a.window)
    eval_sets = {n: batch([test_src.draw(random.Random(f"eval-{n}-{i}"), n) for i in range(a.eval_samples)])
                 for n in a.eval_lengths}

    def compress(mid, q):
        b = balanced_boundaries(mid.shape[1], a.segment_len)
        return model.compress(mid, boundaries=b, query_ids=q if a.query_dependent else None)

    @torch.no_grad()
    def score(ids, labels, mem):
        """Answer NLL per token; digit accuracy, overall and per key position; the share of
        arg-max digits found anywhere in the key (order ignored); exact-answer share."""
        out = model(ids, memory=mem, labels=labels)
        pred = out.logits[:, :-1].argmax(-1)
        gold = labels[:, 1:]
        m = gold != -100
        hit = (pred == gold) | ~m
        digits = m & (torch.cumsum(m, 1) > 1)   # the answer's leading space is not a digit
        p_dig = pred[digits].view(ids.shape[0], -1)
        g_dig = gold[digits].view(ids.shape[0], -1)
        by_pos = (p_dig == g_dig).float().mean(0)
        in_key = (p_dig[:, :, None] == g_dig[:, None, :]).any(-1).float().mean()
        return {"nll": out.loss.item(), "digit_acc": by_pos.mean().item(), "in_key": in_key.item(),
                "exact": hit.all(1).float().mean().item(), "by_pos": by_pos.tolist()}

    def evaluate(step, t0):
        model.eval()
        rec = {"step": step, "hay": hay_at(a.schedule, step)}
        for n, (ids, labels, mid, q, _) in eval_sets.items():
            res = {}
            for i in range(0, ids.shape[0], 8):
                sl = slice(i, i + 8)
                own = compress(mid[sl], q[sl])
                j = torch.arange(ids.shape[0]).roll(1)[sl]      # another sample's memory
                other = compress(mid[j], q[j])
                for name, mem in (("own", own), ("swapped", other)):
                    for k, v in score(ids[sl], labels[sl], mem).items():
                        w = ids[sl].shape[0]
                        res.setdefault(f"{name}_{k}", []).append([x * w for x in v] if isinstance(v, list) else v * w)
            rec[str(n)] = {k: [round(sum(c) / ids.shape[0], 3) for c in zip(*v)] if isinstance(v[0], list)
                           else round(sum(v) / ids.shape[0], 4) for k, v in res.items()}
        rec["t"] = round(time.time() - t0)
        print(json.dumps(rec), flush=True)
        model.train()

    rng = random.Random(a.seed)
    t0 = time.time()
    model.train()
    for step in range(a.steps + 1):
        if step % a.eval_every == 0 or step == a.steps:
            evaluate(step, t0)
        if step == a.steps:
            break
        n = hay_at(a.schedule, step)
        ids, labels, mid, q, _ = batch([train_src.draw(rng, n) for _ in range(a.batch)])
        loss = model(ids, memory=compress(mid, q), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
    if a.save:
        model.save_pretrained(a.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
