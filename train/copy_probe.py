"""Copy-task probe: does LCIRC read its compressed memory, or only react to its presence?

Each step draws `--batch` KJV training passages of `--passage-len` tokens, compresses each into a
fresh memory and trains the model to predict the same passage (the frozen SmolLM2-135M alone
cannot). Every `--eval-every` steps, 32 fixed validation-book passages are scored (mean NLL per
token) with their own memory, with another passage's memory and with no memory; `gap` =
swapped - own is what the memory's content is worth. `spread` is the mean distance of the memory
vectors of 8 passages from their mean, over the mean vector norm (0: the memory ignores its input).
One JSON line per evaluation goes to stdout.

    OMP_NUM_THREADS=1 python train/copy_probe.py --steps 40 --eval-every 10 \
        --gate-init 0.5 --compressor-q-scale 8 --gca-q-scale 4 --compressor-lr-mult 0.1 --center-positions
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="copy_probe.py", description=__doc__.split("\n")[0])
    ap.add_argument("--gca", default="12,18,24,29", help="decoder layers that get a GCA block")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--compressor-lr-mult", type=float, default=1.0)
    ap.add_argument("--gate-lr-mult", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--passage-len", type=int, default=32)
    ap.add_argument("--latents", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-passages", type=int, default=32, help="multiple of 8")
    ap.add_argument("--gate-init", type=float, default=0.0, help="initial GCA attention gate alpha")
    ap.add_argument("--compressor-q-scale", type=float, default=1.0)
    ap.add_argument("--gca-q-scale", type=float, default=1.0)
    ap.add_argument("--center-positions", action="store_true",
                    help="subtract the mean training-token embedding from the position table")
    ap.add_argument("--freeze-final-norm", action="store_true",
                    help="keep the compressor's final LayerNorm affine at its init")
    ap.add_argument("--grad-centering", action="store_true",
                    help="remove the batch-mean gradient of the memory (its common-mode push)")
    ap.add_argument("--contrast", type=float, default=0.0,
                    help="weight of relu(margin - (swapped loss - own loss)), in-batch swap")
    ap.add_argument("--margin", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None, help="tokenisation cache")
    a = ap.parse_args(argv)
    if a.eval_passages % 8 or a.eval_passages < 8:
        ap.error(f"--eval-passages must be a positive multiple of 8, got {a.eval_passages}")
    if a.batch < 2 and (a.grad_centering or a.contrast > 0):
        ap.error("--grad-centering and --contrast need --batch >= 2")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    from lcirc_fast.assets import load_smollm2
    from lcirc_fast.config import LCIRCConfig
    from lcirc_fast.data import kjv_splits, tokenize_documents
    from lcirc_fast.models import LCIRCForCausalLM
    from lcirc_fast.models.init_recipe import center_positions
    from lcirc_fast.training.engine import param_group_name

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base, tok = load_smollm2(torch.float32)
    length = a.passage_len
    cfg = LCIRCConfig(num_latents=a.latents, compressor_layers=2, max_segment_len=max(128, length),
                      segment_len=length, gca_layers=[int(x) for x in a.gca.split(",")], memory_cap=256)
    model = LCIRCForCausalLM.from_base(base, cfg)
    with torch.no_grad():
        model.compressor.pos_emb.normal_(0, 0.05)
        model.latents.normal_(0, 0.02)
        for blk in model.gca.values():
            blk.attn_gate.fill_(a.gate_init)
            blk.attn.to_q.weight.mul_(a.gca_q_scale)
        for layer in model.compressor.layers:
            layer.attn.to_q.weight.mul_(a.compressor_q_scale)
    if a.freeze_final_norm:
        model.compressor.norm.weight.requires_grad_(False)
        model.compressor.norm.bias.requires_grad_(False)
    groups = {"rest": [], "compressor": [], "gates": []}
    for n, p in model.named_parameters():
        if p.requires_grad:
            g = param_group_name(n)
            groups[g if g in groups else "rest"].append(p)
    mult = {"rest": 1.0, "compressor": a.compressor_lr_mult, "gates": a.gate_lr_mult}
    opt = torch.optim.AdamW([{"params": v, "lr": a.lr * mult[k]} for k, v in groups.items() if v],
                            weight_decay=0.0)
    splits = kjv_splits()
    train = torch.cat(tokenize_documents([t for _, t in splits["train"]], tok, a.cache_dir))
    val_stream = torch.cat(tokenize_documents([t for _, t in splits["validation"]], tok, a.cache_dir))
    if a.center_positions:
        center_positions(model, [train])

    def draw(src, n, gen):
        idx = torch.randint(0, src.numel() - length, (n,), generator=gen)
        return torch.stack([src[i:i + length] for i in idx.tolist()])

    g = torch.Generator().manual_seed(1)
    val = draw(val_stream, a.eval_passages, torch.Generator().manual_seed(7))
    other = val.roll(1, 0)

    def nll(p, mem):
        return model(p, memory=mem, labels=p).loss.item()

    @torch.no_grad()
    def evaluate():
        model.eval()
        own = sw = none = 0.0
        chunks = a.eval_passages // 8
        for i in range(0, a.eval_passages, 8):
            p, q = val[i:i + 8], other[i:i + 8]
            own += nll(p, model.compress(p, segment_len=length))
            sw += nll(p, model.compress(q, segment_len=length))
            none += nll(p, None)
        mm = torch.cat(model.compress(val[:8], segment_len=length).slots, 1)
        spread = ((mm - mm.mean(0, keepdim=True)).norm(dim=-1).mean() / mm.norm(dim=-1).mean()).item()
        model.train()
        return own / chunks, sw / chunks, none / chunks, spread

    t0 = time.time()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for step in range(a.steps + 1):
        if step % a.eval_every == 0 or step == a.steps:
            own, sw, none, spread = evaluate()
            print(json.dumps({"step": step, "own": round(own, 4), "swapped": round(sw, 4),
                              "none": round(none, 4), "gap": round(sw - own, 4),
                              "spread": round(spread, 4), "t": round(time.time() - t0),
                              "gates": [round(torch.tanh(b.attn_gate).item(), 3)
                                        for b in model.gca.values()]}), flush=True)
        if step == a.steps:
            break
        p = draw(train, a.batch, g)
        mem = model.compress(p, segment_len=length)
        if a.grad_centering:
            for s in mem.slots:
                if s.requires_grad:
                    s.register_hook(lambda gr: gr - gr.mean(0, keepdim=True))
        out = model(p, memory=mem, labels=p)
        loss = out.loss
        if a.contrast > 0:
            swapped = model(p, memory=model.compress(p.roll(1, 0), segment_len=length), labels=p).loss
            loss = loss + a.contrast * torch.relu(a.margin - (swapped - out.loss))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
