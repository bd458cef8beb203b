"""The synthetic retrieval parts of `lcirc eval`: `passkey` (strict score first, lenient beside
it), `ruler` (RULER's needle tasks) and `compare` (two models' predictions.jsonl, paired)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError

PASSKEY_NOTE = ("accuracy is strict (the first integer of the answer is the key: InfiniteBench's "
                "Retrieve.PassKey rule); lenient: lenient_contains (the key anywhere in the answer) and "
                "digit_accuracy (the key's digits in place, chance 0.1)")


def write_predictions(out: Path, records: list[dict]) -> None:
    (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def run_passkey(args, model, tok, docs, modes, lengths, max_new: int, out: Path):
    """(results, Markdown table) of the pass-key run; its answers go to out/predictions.jsonl."""
    from ..eval import format_table, passkey_eval, plot_lines
    from ..eval.passkey import by_length

    res = passkey_eval(model, tok, docs, args.window, lengths, args.depths, modes, args.samples,
                       args.seed, args.segment_len, max_new, max_full_tokens=args.max_full_tokens)
    write_predictions(out, res.pop("predictions"))
    partner = (["partner_accuracy", "partner_lenient_contains", "partner_digit_accuracy"]
               if "lcirc_swapped" in modes else [])
    table = PASSKEY_NOTE + "\n\n" + format_table(
        res["rows"], ["mode", "length", "depth", "accuracy", "lenient_contains", "digit_accuracy", *partner,
                      "n", "failed"])
    res["by_length"] = by_length(res["rows"])
    table += ("\n\npooled over depths (digit accuracy per key position in order):\n"
              + format_table(res["by_length"], ["mode", "length", "n", "failed", "accuracy", "lenient_contains",
                                               "digit_accuracy", "digit_accuracy_by_pos", *partner]))
    series = {}
    for m in modes:
        for length in lengths:
            cells = [r for r in res["rows"] if r["mode"] == m and r["length"] == length]
            series.setdefault(m, []).append((length, sum(r["accuracy"] for r in cells) / len(cells)))
    plot_lines(out / "passkey_by_length.png", series, "context tokens", "strict accuracy (mean over depths)",
               f"pass-key retrieval (window {args.window})")
    return res, table


def run_ruler(args, model, tok, docs, modes, out: Path):
    """(results, Markdown table) of the RULER run; its answers go to out/predictions.jsonl."""
    from ..eval import format_table
    from ..eval.ruler import ruler_eval

    lengths = args.lengths or [4 * args.window, 16 * args.window]
    res = ruler_eval(model, tok, docs, args.window, lengths, args.tasks or ["niah_single", "niah_multikey"],
                     modes, args.samples, args.seed, args.segment_len, args.max_new_tokens, args.max_full_tokens)
    write_predictions(out, res.pop("predictions"))
    partner = ["partner_score"] if any(m.endswith("_swapped") for m in modes) else []
    table = ("score: RULER's string_match_all (share of the expected values found in the answer), "
             "match_part: string_match_part (any found)\n\n"
             + format_table(res["rows"], ["task", "mode", "length", "n", "failed", "score", "match_part", *partner]))
    return res, table


def run_compare(args) -> int:
    """`lcirc eval compare --data A.jsonl,B.jsonl`: paired comparison, written to --out."""
    from ..eval import format_table, write_json
    from ..eval.compare import compare_files

    files = [f for f in args.data.split(",") if f]
    if len(files) != 2:
        raise ConfigError("compare needs --data A/predictions.jsonl,B/predictions.jsonl (two files), "
                          f"got {args.data!r}")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"--data: no such file(s): {', '.join(missing)}")
    if args.modes is not None and len(args.modes) != 2:
        raise ConfigError(f"compare takes --modes A_MODE,B_MODE (one per file), got {','.join(args.modes)}")
    res = compare_files(files[0], files[1], args.modes)
    m = res["meta"]
    table = (f"B - A, paired per sample: A = {m['a']} ({m['mode_a']}), B = {m['b']} ({m['mode_b']}); "
             "se = sd of the differences / sqrt(n); ci95 = diff -+ 1.96 se\n\n"
             + format_table(res["rows"], ["task", "length", "n", "mean_a", "mean_b", "diff", "se", "ci95_low",
                                          "ci95_high", "b_better", "a_better"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", res)
    (out / "compare.md").write_text(table + "\n")
    print(table)
    print(f"results in {out}", file=sys.stderr)
    return 0
