"""`lcirc eval {ppl,passkey,ruler,longbench,infinitebench,leval,compare}`: evaluate the truncated
base model, LCIRC, QD-LCIRC and full attention; results as Markdown tables, JSON and (ppl, passkey)
a PNG plot. The benchmarks read their released files (`<task>.jsonl`) with each task's own prompt,
answer limit and metric; passkey, ruler and the benchmarks write every answer to predictions.jsonl,
and `compare` sets two such files side by side, paired per sample."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from ..errors import CheckpointError, ConfigError, DataError, RunError
from .options import add_backend_option, apply_backend, check_backend

MAX_LISTED = 5  # problems named in a failed run's message; the rest are counted
BENCHMARKS = ("longbench", "infinitebench", "leval")
DEFAULT_MAX_NEW_TOKENS = 32  # ppl/passkey and LongBench files of no named task


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {s!r}") from None


def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {s!r}") from None


def _strs(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="perplexity by length, pass-key retrieval, RULER needles, LongBench, "
                              "InfiniteBench, L-Eval, paired comparison", description=__doc__)
    p.add_argument("task", choices=["ppl", "passkey", "ruler", *BENCHMARKS, "compare"])
    p.add_argument("--base", default="smollm2",
                   help="smollm2-135m (bundled; alias smollm2) | tiny_random | Hugging Face model directory "
                   "of a supported family")
    p.add_argument("--lcirc", default=None, help="LCIRC directory from save_pretrained (training's best/ or final/)")
    p.add_argument("--official-checkpoint", default=None,
                   help="the reference implementation's .pt checkpoint, instead of --lcirc")
    p.add_argument("--window", type=int, default=4096, help="LLM window in tokens")
    p.add_argument("--segment-len", type=int, default=2048, help="~segment length for compression")
    p.add_argument("--modes", type=_strs, default=None,
                   help="comma list of base,lcirc,qd,full (ppl and passkey also: lcirc_swapped, a "
                        "control: another document's / sample's memory; ruler also lcirc_swapped, qd_swapped; "
                        "compare: the mode of each file, A,B)")
    p.add_argument("--data", default="kjv-test",
                   help="kjv-test | kjv-validation | jsonl/parquet/txt file(s); benchmarks: a directory of "
                        "<task>.jsonl files or a comma list of them; compare: A/predictions.jsonl,"
                        "B/predictions.jsonl")
    p.add_argument("--tasks", type=_strs, default=None,
                   help="benchmark tasks to run (file stems, e.g. narrativeqa,hotpotqa_e; InfiniteBench also "
                        "En.QA, ...); default: every task file found in --data; ruler: niah_single, niah_multikey, "
                        "niah_multivalue, niah_multiquery, vt (default niah_single,niah_multikey)")
    p.add_argument("--field", default="text", help="text column of --data files (ppl)")
    p.add_argument("--docs", type=int, default=16, help="documents (ppl)")
    p.add_argument("--multipliers", type=_ints, default=[1, 2, 4, 8, 16, 32], help="context lengths / window (ppl)")
    p.add_argument("--repeat-passage", action="store_true",
                   help="ppl copy test: each document is a --window-token passage P followed by P "
                        "again; P is compressed and its copy scored (multipliers fixed to 2)")
    p.add_argument("--max-full-tokens", type=int, default=8192, help="longest input for full attention")
    p.add_argument("--lengths", type=_ints, default=None,
                   help="context tokens (passkey: default 1,2,4x window; ruler: 4,16x window)")
    p.add_argument("--depths", type=_floats, default=[0.1, 0.5, 0.9], help="needle depths (passkey)")
    p.add_argument("--samples", type=int, default=5, help="samples per cell (passkey, ruler)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer tokens (default: each benchmark task's own limit; 32 otherwise)")
    p.add_argument("--memory-cap", type=int, default=-1,
                   help="memory vectors kept at inference (-1: the trained model's setting, 0: no cap)")
    p.add_argument("--threads", type=int, default=None)
    add_backend_option(p)
    p.add_argument("--out", default="runs/eval", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    return p


def resolve_modes(task: str, requested: list[str] | None, has_lcirc: bool, query_dependent: bool) -> list[str]:
    """The modes to evaluate: `requested`, or by default the truncated base plus the trained model
    (lcirc, or qd for a QD-LCIRC model). Raises on a mode the task or the model cannot run."""
    allowed = {"ppl": ("base", "lcirc", "lcirc_swapped", "full"),
               "passkey": ("base", "lcirc", "lcirc_swapped", "qd", "full"),
               "ruler": ("base", "lcirc", "lcirc_swapped", "qd", "qd_swapped", "full")}.get(
        task, ("base", "lcirc", "qd", "full"))
    compressed = "qd" if query_dependent else "lcirc"
    default = "lcirc" if task == "ppl" else compressed     # ppl refuses a QD model below
    model_modes = [default, default + "_swapped"] if task == "ruler" else [default]   # ruler: and its control
    modes = requested or (["base", *model_modes] if has_lcirc else ["base"])
    bad = [m for m in modes if m not in allowed]
    if bad:
        raise ValueError(f"mode(s) {bad} are not available for {task}; choose from {list(allowed)}"
                         + (" (perplexity has no question for qd)" if task == "ppl" and "qd" in bad else ""))
    wants_model = [m for m in modes if m in ("lcirc", "qd", "lcirc_swapped", "qd_swapped")]
    if wants_model and not has_lcirc:
        raise ValueError(f"mode(s) {wants_model} need --lcirc <trained directory>")
    if wants_model and task == "ppl" and query_dependent:
        raise ValueError("this is a QD-LCIRC model (query_dependent=True): it compresses with the question, "
                         "and perplexity has none; score its stage-1 model, or use --modes base,full")
    fits = ("qd", "qd_swapped") if query_dependent else ("lcirc", "lcirc_swapped")
    wrong = [m for m in wants_model if m not in fits]
    if wrong:
        kind = "a QD-LCIRC model (query_dependent=True)" if query_dependent else "an LCIRC model without a mixer"
        raise ValueError(f"mode(s) {wrong} do not fit {kind}; use {compressed}")
    return modes


def _positive(name: str, value, minimum: int = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value}")


def _positive_list(name: str, values: list) -> None:
    if not values:
        raise ConfigError(f"{name} needs at least one value")
    bad = [v for v in values if v < 1]
    if bad:
        raise ConfigError(f"{name} values must be >= 1, got {bad}")


def check_args(args) -> None:
    """Refuse out-of-range numbers, missing paths and task/data mismatches before any loading."""
    if args.task == "ruler" and args.tasks:
        from ..data.ruler import TASKS

        bad = [t for t in args.tasks if t not in TASKS]
        if bad:
            raise ConfigError(f"--tasks {','.join(bad)}: not RULER task(s); choose from {', '.join(TASKS)}")
    for name in ("segment_len", "max_new_tokens", "max_full_tokens", "docs", "samples"):
        if getattr(args, name) is not None:
            _positive("--" + name.replace("_", "-"), getattr(args, name))
    _positive("--window", args.window, 2)
    if args.threads is not None:
        _positive("--threads", args.threads)
    _positive("--memory-cap", args.memory_cap, -1)
    _positive_list("--multipliers", args.multipliers)
    if args.lengths is not None:
        _positive_list("--lengths", args.lengths)
    if not args.depths:
        raise ConfigError("--depths needs at least one value")
    swapped = [m for m in args.modes or [] if m.endswith("_swapped")]
    if args.task == "ruler" and not args.modes and args.samples < 2:
        raise ConfigError("ruler's default modes include the swapped-memory control, which answers each sample "
                          "with another sample's memory: use --samples >= 2 or name --modes")
    if args.task in ("passkey", "ruler") and swapped and args.samples < 2:
        raise ConfigError(f"--modes {swapped[0]} answers each sample with another sample's memory: "
                          "it needs --samples >= 2")
    bad = [d for d in args.depths if not 0.0 <= d <= 1.0]
    if bad:
        raise ConfigError(f"--depths must lie in [0, 1], got {bad}")
    if args.task != "ppl" and (args.max_new_tokens is not None or args.task in ("passkey", "ruler")):
        new = _max_new(args)
        new = min(new, 16) if args.task == "passkey" else new
        if args.task == "ruler" and args.max_new_tokens is None:
            from ..data.ruler import TOKENS_TO_GENERATE

            new = max(TOKENS_TO_GENERATE[t] for t in args.tasks or ["niah_single"])
        if args.window - new < 2:
            raise ConfigError(f"--window {args.window} leaves no room for a prompt with --max-new-tokens "
                              f"{new}; use a window of at least {new + 2}")
    if args.task == "ppl" and args.modes and "full" in args.modes \
            and min(args.multipliers) * args.window > args.max_full_tokens:
        raise ConfigError(f"mode full reads every token, and the shortest length {min(args.multipliers)} x "
                          f"--window {args.window} exceeds --max-full-tokens {args.max_full_tokens}")
    from ..assets import SMOLLM2_NAME
    from ..models.base_loader import check_base_dir, is_named_base

    if not is_named_base(args.base):
        if not Path(args.base).is_dir():
            raise ConfigError(f"--base {args.base}: not {SMOLLM2_NAME}, tiny_random or a Hugging Face "
                              "model directory")
        check_base_dir(args.base, label="--base", tokenizer=True)
    if args.official_checkpoint is not None:
        if args.lcirc is not None:
            raise ConfigError("--lcirc and --official-checkpoint both give the trained model; pass one")
        if not Path(args.official_checkpoint).is_file():
            raise CheckpointError(f"--official-checkpoint {args.official_checkpoint}: no such file; give the "
                                  "reference implementation's .pt checkpoint")
    if args.lcirc is not None and not Path(args.lcirc).is_dir():
        raise CheckpointError(f"--lcirc {args.lcirc}: no such directory; give the best/ or final/ "
                              "directory that training saved")
    if args.task == "longbench" and args.data.startswith("kjv-"):
        raise ConfigError("longbench needs --data <LongBench .jsonl, .json or .parquet file>")
    if args.task in BENCHMARKS and args.task != "longbench" and args.data.startswith("kjv-"):
        raise ConfigError(f"{args.task} needs --data <directory of its released <task>.jsonl files, or "
                          "a comma list of them>")
    if args.tasks is not None and args.task not in (*BENCHMARKS, "ruler"):
        raise ConfigError(f"--tasks is for longbench, infinitebench, leval and ruler, not {args.task}")


def _max_new(args) -> int:
    return DEFAULT_MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens


def _load(args):
    import torch

    from ..training.builders import build_base
    from ..training.config import TrainConfig

    cfg = TrainConfig()
    cfg.base.name = args.base
    cfg.seed = args.seed
    base, tok = build_base(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if args.lcirc or args.official_checkpoint is not None:
        if args.lcirc:
            from ..models import LCIRCForCausalLM

            model = LCIRCForCausalLM.from_pretrained(args.lcirc, base=base)
        else:
            from .convert import official_model

            model = official_model(base, args.official_checkpoint)
        if args.memory_cap >= 0:
            model.config.memory_cap = args.memory_cap or None
    else:
        from ..config import LCIRCConfig
        from ..models import LCIRCForCausalLM

        model = LCIRCForCausalLM.from_base(base, LCIRCConfig(num_latents=1, compressor_layers=1))
    model.eval()
    return model, tok


def _kjv_split(name: str):
    from ..data import kjv_splits

    split = name.split("-", 1)[1]
    if split not in ("train", "validation", "test"):
        raise ValueError(f"--data {name}: use kjv-train, kjv-validation or kjv-test")
    return kjv_splits()[split]


def _generic_longbench(args) -> bool:
    """True for the generic-prompt run: longbench --data naming files of no LongBench task."""
    from ..eval.benchmark_files import known_tasks

    if args.task != "longbench" or args.tasks or Path(args.data).is_dir():
        return False
    return all(Path(f).stem not in known_tasks("longbench") for f in args.data.split(",") if f)


def _read_benchmark(args) -> dict:
    """task -> Samples of the benchmark's task files, checked, with rows excluded per task;
    ConfigError when a task's answer limit leaves no room in --window."""
    from ..eval.benchmark_files import find_task_files, load_task

    samples, excluded = {}, {}
    for task, path in find_task_files(args.task, args.data, args.tasks).items():
        samples[task], excluded[task] = load_task(args.task, task, path)
        new = args.max_new_tokens or max(s.max_new_tokens for s in samples[task])
        if args.window - new < 2:
            raise ConfigError(f"--window {args.window} leaves no room for a prompt with the {new} answer tokens "
                              f"of {task}; use a window of at least {new + 2} or a smaller --max-new-tokens")
    return {"samples": samples, "excluded": excluded}


def _read_data(args):
    """Benchmark samples, LongBench rows (generic longbench) or (name, text) documents (ppl,
    passkey), checked."""
    if args.task in BENCHMARKS and not _generic_longbench(args):
        return _read_benchmark(args)
    if args.task == "longbench":
        from ..data.loaders import load_longbench

        return load_longbench(args.data)
    if args.data.startswith("kjv-"):
        return _kjv_split(args.data)
    from ..data.loaders import load_text_documents

    return [(f"doc{i}", t) for i, t in enumerate(load_text_documents(args.data, args.field))]


def _ppl_docs(args, ids):
    """The documents perplexity scores; DataError when none is long enough."""
    from ..data import chunk_documents

    if args.repeat_passage:
        from ..data import repeated_passage_docs

        docs = repeated_passage_docs(chunk_documents(ids, args.window, min_tokens=args.window), args.window)
        need = f"the {args.window} tokens of one --window"
    else:
        longest = max(args.multipliers) * args.window
        need_tokens = args.multipliers[0] * args.window
        docs = chunk_documents(ids, longest, min_tokens=need_tokens)
        need = f"the {need_tokens} tokens that --multipliers {args.multipliers[0]} x --window {args.window} needs"
    if not docs:
        longest_doc = max((d.numel() for d in ids), default=0)
        raise DataError(f"--data {args.data}: no document has {need} (the longest has {longest_doc} tokens); "
                        "use longer documents or a smaller --window")
    return docs[:args.docs]


def _check_out_dir(out: Path) -> Path:
    """`out` unchanged if results can be written there; ConfigError naming the problem otherwise."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; results go into a directory: pass a new or "
                          "existing directory")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write under {parent}; pass a writable directory")
    return out


def run(args) -> int:
    import torch

    from ..data import tokenize_documents
    from ..eval import format_table, plot_lines

    if args.task == "compare":
        from .eval_synthetic import run_compare

        _check_out_dir(Path(args.out))
        return run_compare(args)
    check_args(args)
    check_backend(args.backend)
    out = _check_out_dir(Path(args.out))
    data = _read_data(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = _load(args)
    apply_backend(model, args.backend)
    if tok is None:
        raise ConfigError(f"{args.task} needs a base model with a tokenizer; --base {args.base} has none")
    has_lcirc = args.lcirc is not None or args.official_checkpoint is not None
    modes = resolve_modes(args.task, args.modes, has_lcirc, has_lcirc and model.config.query_dependent)
    if isinstance(data, dict):
        return _run_benchmark(args, out, model, tok, data, modes)
    t0 = time.time()
    meta = {"task": args.task, "base": args.base, "lcirc": args.lcirc or args.official_checkpoint,
            "window": args.window,
            "segment_len": args.segment_len, "modes": modes, "memory_cap": model.config.memory_cap}
    if args.task in ("ppl", "passkey", "ruler"):
        ids = tokenize_documents([t for _, t in data], tok, None if not args.data.startswith("kjv-") else _tok_cache())
    if args.task == "ppl":
        from ..eval import perplexity_by_length

        docs = _ppl_docs(args, ids)
        if args.repeat_passage:
            args.multipliers = [2]
            meta["repeat_passage"] = True
        res = perplexity_by_length(model, docs, args.window, args.multipliers, modes,
                                   segment_len=args.segment_len, max_full_tokens=args.max_full_tokens)
        table = format_table(res["rows"], ["length", "mode", "ppl", "tokens", "docs", "failures", "skipped_short"])
        if res["paired"]:
            table += ("\n\nswapped-memory control, per document (swapped - own NLL per token):\n"
                      + format_table(res["paired"], ["length", "docs", "mean_gap", "se", "own_better"]))
        series = {m: [(r["length"], r["ppl"]) for r in res["rows"] if r["mode"] == m] for m in modes}
        plot_lines(out / "ppl_by_length.png", series, "context tokens", "perplexity (last window)",
                   f"perplexity by context length (window {args.window})")
    elif args.task == "passkey":
        from .eval_synthetic import run_passkey

        lengths = args.lengths or [args.window, 2 * args.window, 4 * args.window]
        res, table = run_passkey(args, model, tok, list(zip([n for n, _ in data], ids)), modes, lengths,
                                 min(_max_new(args), 16), out)
    elif args.task == "ruler":
        from .eval_synthetic import run_ruler

        res, table = run_ruler(args, model, tok, list(zip([n for n, _ in data], ids)), modes, out)
    else:
        from ..eval import longbench_eval

        preds: list = []
        res = longbench_eval(model, tok, data, args.window, modes, _max_new(args), args.segment_len,
                             predictions=preds, max_full_tokens=args.max_full_tokens)
        (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
        table = format_table(res["rows"], ["mode", "n", "failed", "f1", "em", "f1_counting_failures"])
    meta["wall_s"] = time.time() - t0
    return _finish(args, out, res, meta, table, modes)


def _run_benchmark(args, out: Path, model, tok, data: dict, modes: list[str]) -> int:
    from ..eval import format_table
    from ..eval.benchmark_run import run_benchmark

    t0 = time.time()
    meta = {"task": args.task, "base": args.base, "lcirc": args.lcirc or args.official_checkpoint,
            "window": args.window,
            "segment_len": args.segment_len, "modes": modes, "memory_cap": model.config.memory_cap,
            "tasks": list(data["samples"]), "max_new_tokens": args.max_new_tokens or "per task",
            "excluded_rows": data["excluded"]}
    preds: list = []
    res = run_benchmark(model, tok, args.task, data["samples"], args.window, modes, args.segment_len,
                        args.max_full_tokens, args.max_new_tokens, predictions=preds)
    (out / "predictions.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    cols = ["task", "mode", "n", "failed", "score", "score_counting_failures"]
    buckets = [b for b in ("0-4k", "4-8k", "8k+") if any(b in r for r in res["rows"])]
    table = (format_table(res["rows"], cols + buckets) + "\n\naverage over tasks:\n"
             + format_table(res["average"], ["mode", "tasks", "tasks_scored", "n", "failed", "score",
                                             "score_counting_failures"]))
    meta["wall_s"] = time.time() - t0
    return _finish(args, out, res, meta, table, modes)


def _finish(args, out: Path, res: dict, meta: dict, table: str, modes: list[str]) -> int:
    """Write the JSON and Markdown results, print them, and raise RunError for an unusable run."""
    from ..eval import write_json

    res["meta"] = meta
    problems = result_problems(args.task, res, modes)
    res["problems"] = problems
    write_json(out / f"{args.task}.json", res)
    n_fail = len(res["failures"])
    text = f"{table}\n\nfailures: {n_fail}" + "".join(f"\n  {_failure_line(f)}" for f in res["failures"][:10])
    if problems:
        text += "\n\nrun failed:" + "".join(f"\n  {p}" for p in problems)
    (out / f"{args.task}.md").write_text(text + "\n")
    print(text)
    if problems:
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        first = (f"; {n_fail} failed samples in all, the first: {res['failures'][0]['error']}"
                 if res["failures"] else "")
        raise RunError(f"{args.task} failed: {'; '.join(problems[:MAX_LISTED])}{more}{first}; results in {out}")
    print(f"wall: {meta['wall_s']:.1f} s; results in {out}", file=sys.stderr)
    return 0


def _failure_line(failure: dict) -> str:
    """A failure record without its traceback (kept in the JSON)."""
    return ", ".join(f"{k}={v}" for k, v in failure.items() if k != "trace")


_METRICS = {"ppl": ("ppl",), "passkey": ("accuracy", "digit_accuracy"), "ruler": ("score",),
            "longbench": ("f1", "em", "score"),
            "infinitebench": ("score",), "leval": ("score",)}


def _samples(task: str, row: dict) -> tuple[int, int]:
    """(samples tried, samples failed) of one result row."""
    if task == "ppl":
        return row["docs"] + row["failures"], row["failures"]
    return row["n"], row["failed"]


def _cell(task: str, row: dict) -> str:
    if task == "ppl":
        return (f"mode {row['mode']} at length {row['length']} ({row['docs']} documents scored, "
                f"{row['failures']} failed, {row['skipped_short']} too short)")
    if task == "passkey":
        return f"mode {row['mode']} at length {row['length']}, depth {row['depth']}"
    if task == "ruler":
        return f"task {row['task']}, mode {row['mode']} at length {row['length']}"
    if "task" in row:
        return f"task {row['task']}, mode {row['mode']}"
    return f"mode {row['mode']}"


def result_problems(task: str, res: dict, modes: list[str]) -> list[str]:
    """Why a finished run counts as failed: a mode whose every sample failed or that produced no
    result, and every NaN metric elsewhere; [] for a usable run."""
    problems, dead = [], set()
    for mode in modes:
        rows = [r for r in res["rows"] if r["mode"] == mode]
        tried = sum(_samples(task, r)[0] for r in rows)
        failed = sum(_samples(task, r)[1] for r in rows)
        if not rows or tried == 0:
            problems.append(f"mode {mode} scored no sample")
            dead.add(mode)
        elif failed == tried:
            problems.append(f"every sample of mode {mode} failed ({failed} of {tried})")
            dead.add(mode)
    for r in res["rows"]:
        nan = [k for k in _METRICS[task] if isinstance(r.get(k), float) and math.isnan(r[k])]
        if nan and r["mode"] not in dead:
            problems.append(f"{'/'.join(nan)} is NaN for {_cell(task, r)}")
    return problems


def _tok_cache():
    from ..assets import cache_root

    return str(cache_root() / "tokens")
