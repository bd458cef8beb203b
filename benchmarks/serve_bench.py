"""Serving benchmark: one long document, many questions, through `lcirc_fast.serving.Engine`.

Measured side by side in one run on the bundled SmolLM2-135M with fresh LCIRC weights (seed 0,
the `lcirc` CLI's defaults; speed does not depend on training):

* the first question (compress + answer) against each later question, for LCIRC and QD-LCIRC,
  and a QD question that compresses from scratch (what a QD model costs without the cache);
* questions per second at concurrency 1, 4 and 16 (LCIRC, the document cached);
* the base model with full attention (SDPA) over the whole document plus the question;
* float32 against bfloat16: compression time, the memory's relative error, and how often the
  greedy answers agree;
* later LCIRC questions and questions per second at concurrency 16 with the decoding steps'
  products as torch runs them and as `FewRowLinear` runs them (`use_few_row_linears`, what the
  engine does by default).

Later questions and the QD question from scratch are also timed to their first token. The main
thread stays at one torch thread and every measured torch call runs on an engine's torch thread
(`Engine.call`), as in `lcirc serve` (why: `lcirc_fast.serving.batcher`).

    python benchmarks/serve_bench.py --tokens 32768 --threads 2 --out /tmp/serve_bench.json
    python benchmarks/serve_bench.py --tokens 2048 --threads 2     # a quick check
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

QUESTIONS = ["Who was the first man?", "What did God create on the first day?",
             "Who built the ark?", "Where did Abraham go?", "Who was Joseph's father?",
             "What was the name of Moses' brother?", "Who wrote the psalms?",
             "What happened at the tower of Babel?"]


def ask(engine, question: str, doc_id: str | None, max_tokens: int,
        first_token: list | None = None) -> list[int]:
    """Greedy answer tokens of one question through the engine's batcher; `first_token`, if
    given, receives the perf_counter time of the first token."""
    from lcirc_fast.serving.engine import Row

    done, toks = threading.Event(), []

    def sink(kind, value):
        if kind == "token":
            if not toks and first_token is not None:
                first_token.append(time.perf_counter())
            toks.append(value)
        elif kind == "error":
            toks.append(value)
            done.set()
        else:
            done.set()

    prompt = engine.encode(engine.chat_prompt([{"role": "user", "content": question}]))
    engine.submit(Row(prompt, max_tokens, sink, doc_id=doc_id, temperature=0.0,
                      query_ids=engine.encode(question) if engine.qd else None))
    done.wait()
    if toks and isinstance(toks[-1], Exception):
        raise toks[-1]
    return toks


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def build(base, qd: bool, seed: int = 0, state: dict | None = None):
    from lcirc_fast import LCIRCConfig, LCIRCForCausalLM

    torch.manual_seed(seed)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(num_latents=64, max_segment_len=4096,
                                                         query_dependent=qd)).eval()
    if state is not None:
        model.load_state_dict({k: v.to(model.dtype) for k, v in state.items()}, strict=False)
    return model


def engine_for(model, tok, max_tokens: int, threads: int):
    """An engine whose torch thread, at `threads` torch threads, runs every measured torch call
    (`Engine.call`); the main thread stays at one."""
    from lcirc_fast.serving import Engine, EngineSettings

    return Engine(model, tok, tempfile.mkdtemp(prefix="serve-bench-"),
                  EngineSettings(max_batch=16, max_tokens_limit=max_tokens, threads=threads))


def on_torch_thread(fn, threads: int):
    """`fn()` on a fresh thread at `threads` torch threads (for work with no engine alive)."""
    out: list = []

    def run():
        torch.set_num_threads(threads)
        with torch.no_grad():
            out.append(fn())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def later_questions(engine, doc_id: str, questions: list[str], max_tokens: int) -> dict:
    """Each question's whole time and time to its first token (the document cached)."""
    whole, first = [], []
    for q in questions:
        t0, stamp = time.perf_counter(), []
        ask(engine, q, doc_id, max_tokens, stamp)
        whole.append(time.perf_counter() - t0)
        first.append(stamp[0] - t0)
    return {"later_s": statistics.median(whole), "later_all_s": whole,
            "later_first_token_s": statistics.median(first), "later_first_token_all_s": first}


def first_and_later(engine, text: str, questions: list[str], max_tokens: int) -> dict:
    def first():
        info, _ = engine.add_document(text)
        return info, ask(engine, questions[0], info["id"], max_tokens)

    t_first, (info, _) = timed(first)
    return {"doc": info, "first_s": t_first,
            **later_questions(engine, info["id"], questions[1:], max_tokens)}


def throughput(engine, doc_id: str, questions: list[str], max_tokens: int, total: int,
               levels=(1, 4, 16)) -> dict:
    """Questions per second at each concurrency; with several levels, each runs twice, in
    order and in reverse order (1, 4, 16, 16, 4, 1), and the two rates are averaged."""
    if len(levels) > 1:
        runs = [throughput(engine, doc_id, questions, max_tokens, total, (c,))
                for c in (*levels, *reversed(levels))]
        return {c: statistics.mean(r[c] for r in runs if c in r) for c in levels}
    out = {}
    for conc in levels:
        work = [questions[i % len(questions)] for i in range(total)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(conc) as pool:
            list(pool.map(lambda q: ask(engine, q, doc_id, max_tokens), work))
        out[conc] = total / (time.perf_counter() - t0)
    return out


def few_row_stage(eng, doc_id: str, questions: list[str], max_tokens: int, total: int) -> dict:
    """LCIRC later questions, and questions per second at concurrency 16, with plain
    ``nn.Linear`` decoding products and with `FewRowLinear` (`use_few_row_linears`), switched
    on one engine: questions alternate between the two, the throughput runs go A-B-B-A."""
    from lcirc_fast.models.decode_linears import use_few_row_linears, use_plain_linears

    switch = {False: use_plain_linears, True: use_few_row_linears}
    times, answers = {False: [], True: []}, {False: [], True: []}
    for q in questions:
        for flag in (False, True):
            eng.call(lambda: switch[flag](eng.model))
            t, toks = timed(lambda: ask(eng, q, doc_id, max_tokens))
            times[flag].append(t)
            answers[flag].append(toks)
    qps = {False: [], True: []}
    for flag in (False, True, True, False):          # drift cancels in the mean
        eng.call(lambda: switch[flag](eng.model))
        qps[flag].append(throughput(eng, doc_id, questions, max_tokens, total, (16,))[16])
    eng.call(lambda: use_few_row_linears(eng.model))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    same = sum(a == b for a, b in zip(answers[False], answers[True]))
    return {"later_s_linear": off, "later_s_few_row": on, "speedup": off / on,
            "all_s_linear": times[False], "all_s_few_row": times[True],
            "answers_identical": f"{same}/{len(questions)}",
            "qps16_linear": statistics.mean(qps[False]), "qps16_few_row": statistics.mean(qps[True])}


def bf16_stage(res, base, tok, text, doc_ids, state, answers32, t32, h32, n, threads) -> None:
    """float32 against bfloat16: compression time, memory error, identical greedy answers."""
    from lcirc_fast.assets import load_smollm2

    base16, _ = load_smollm2(torch.bfloat16)
    l16 = build(base16, qd=False, state=state)
    e16 = engine_for(l16, tok, n, threads)
    t16 = [e16.call(lambda: timed(lambda: l16.compress(doc_ids))[0]) for _ in range(2)]
    h16 = e16.call(lambda: l16.compress(doc_ids).hidden.detach().float())
    info16, _ = e16.add_document(text)
    answers16 = [ask(e16, q, info16["id"], n) for q in QUESTIONS]
    e16.close()
    same = [a == b for a, b in zip(answers32, answers16)]
    tok_same = [sum(x == y for x, y in zip(a, b)) / max(len(a), 1) for a, b in zip(answers32, answers16)]
    res["bf16"] = {"compress_fp32_s": min(t32), "compress_bf16_s": min(t16),
                   "speedup": min(t32) / min(t16),
                   "memory_rel_error": float((h16 - h32).norm() / h32.norm()),
                   "answers_identical": f"{sum(same)}/{len(same)}",
                   "answer_token_agreement": statistics.mean(tok_same)}
    print("bf16", res["bf16"], file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=32768, help="document length in tokens")
    p.add_argument("--new-tokens", type=int, default=16, help="answer tokens per question")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--throughput-questions", type=int, default=32)
    p.add_argument("--skip-full", action="store_true", help="skip the full-attention baseline")
    p.add_argument("--skip-throughput", action="store_true",
                   help="skip the questions-per-second part")
    p.add_argument("--skip-bf16", action="store_true", help="skip the float32 / bfloat16 comparison")
    p.add_argument("--skip-few-row", action="store_true",
                   help="skip the nn.Linear / FewRowLinear decoding comparison")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)      # measured work runs on one torch thread (see engine_for)

    from transformers.utils import logging

    from lcirc_fast.assets import kjv_text, load_smollm2
    from lcirc_fast.models.generation import generate, stream
    from lcirc_fast.models.segment_kv_cache import DocumentKV

    logging.disable_progress_bar()
    base, tok = load_smollm2(torch.float32)
    ids = tok(kjv_text()[: args.tokens * 8], add_special_tokens=False).input_ids[: args.tokens]
    text = tok.decode(ids)
    n = args.new_tokens
    import os
    import platform

    res: dict = {"tokens": args.tokens, "new_tokens": n, "threads": args.threads,
                 "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                 "loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    def save(res):                 # after every stage, so a run cut short keeps what it had
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1, default=str)

    lcirc = build(base, qd=False)
    eng = engine_for(lcirc, tok, n, args.threads)
    res["lcirc"] = first_and_later(eng, text, QUESTIONS, n)
    log("lcirc", res["lcirc"]["first_s"], res["lcirc"]["later_s"])
    save(res)
    if not args.skip_few_row:
        res["few_row"] = few_row_stage(eng, res["lcirc"]["doc"]["id"], QUESTIONS, n,
                                       args.throughput_questions)
        log("few_row", res["few_row"])
        save(res)
    if not args.skip_throughput:
        res["throughput_qps"] = throughput(eng, res["lcirc"]["doc"]["id"], QUESTIONS, n,
                                           args.throughput_questions)
        log("throughput", res["throughput_qps"])
        save(res)
    answers32 = [ask(eng, q, res["lcirc"]["doc"]["id"], n) for q in QUESTIONS]
    res["lcirc"]["answers"] = answers32
    doc_ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    if not args.skip_bf16:
        t32 = [eng.call(lambda: timed(lambda: lcirc.compress(doc_ids))[0]) for _ in range(2)]
        h32 = eng.call(lambda: lcirc.compress(doc_ids).hidden.detach().float())
    state = lcirc.lcirc_state_dict()
    eng.close()

    qd = build(base, qd=True)
    qeng = engine_for(qd, tok, n, args.threads)
    res["qd"] = first_and_later(qeng, text, QUESTIONS, n)
    res["qd"]["answers"] = [ask(qeng, q, res["qd"]["doc"]["id"], n) for q in QUESTIONS]

    def scratch(q):
        """(whole time, time to the first token, answer tokens) of a question compressed from
        scratch."""
        t0 = time.perf_counter()
        qids = torch.tensor([tok(q, add_special_tokens=False).input_ids])
        prompt = torch.tensor([qeng.encode(qeng.chat_prompt([{"role": "user", "content": q}]))])
        first, answer = None, []
        with torch.no_grad():
            mem = qd.compress(doc_ids, query_ids=qids)
            for t in stream(qd, prompt, memory=mem, max_new_tokens=n, eos_token_id=tok.eos_token_id):
                first = first if first is not None else time.perf_counter() - t0
                answer.append(int(t[0]))
        return time.perf_counter() - t0, first, answer

    doc_id = res["qd"]["doc"]["id"]
    paired = []                      # each later question, then the same one from scratch
    same_answers = []                # the scratch answer equals the engine's (the cached path)
    for i, q in enumerate(QUESTIONS[1:], start=1):
        later = later_questions(qeng, doc_id, [q], n)
        whole, first, answer = qeng.call(lambda: scratch(q))
        paired.append((later["later_s"], later["later_first_token_s"], whole, first))
        same_answers.append(answer == res["qd"]["answers"][i])
    res["qd"]["paired"] = [dict(zip(("later_s", "later_first_token_s", "scratch_s",
                                     "scratch_first_token_s"), p)) for p in paired]
    res["qd"]["scratch_answers_identical"] = f"{sum(same_answers)}/{len(same_answers)}"
    res["qd"]["paired_later_s"] = statistics.median(p[0] for p in paired)
    res["qd"]["paired_later_first_token_s"] = statistics.median(p[1] for p in paired)
    res["qd"]["scratch_s"] = statistics.median(p[2] for p in paired)
    res["qd"]["scratch_first_token_s"] = statistics.median(p[3] for p in paired)
    res["qd"]["scratch_over_later"] = statistics.median(p[2] / p[0] for p in paired)
    res["qd"]["scratch_over_later_first_token"] = statistics.median(p[3] / p[1] for p in paired)
    res["qd"]["build_doc_kv_s"] = qeng.call(lambda: timed(lambda: DocumentKV.build(qd, doc_ids))[0])
    log("qd", res["qd"]["first_s"], res["qd"]["later_s"], res["qd"]["scratch_s"])
    save(res)
    qeng.close()
    lcirc.remove_hooks()
    qd.remove_hooks()

    if not args.skip_bf16:
        bf16_stage(res, base, tok, text, doc_ids, state, answers32, t32, h32, n, args.threads)
        save(res)
    if not args.skip_full:
        full = build(base, qd=False)         # memory None: the plain base model, SDPA
        q_ids = tok(tok.apply_chat_template([{"role": "user", "content": QUESTIONS[1]}],
                                            add_generation_prompt=True, tokenize=False),
                    add_special_tokens=False).input_ids
        prompt = torch.tensor([doc_ids[0].tolist() + q_ids])
        res["full_attention_s"] = on_torch_thread(
            lambda: timed(lambda: generate(full, prompt, max_new_tokens=n))[0], args.threads)
        res["full_attention_attn"] = base.config._attn_implementation
        log("full", res["full_attention_s"])
        save(res)
        full.remove_hooks()

    res["loadavg_end"] = os.getloadavg()
    save(res)
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
