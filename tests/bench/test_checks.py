"""The bench's self-check flags contradictory figures (synthetic rows) and stays quiet on sane
ones."""
from lcirc_fast.bench.checks import flagged, self_check
from lcirc_fast.bench.report import flags_text, measured_table
from lcirc_fast.bench.timing import summarize


def _row(n, full, lcirc, other=0.0, frac=0.8, peak=1 << 20, spread=0.05):
    def st(m):
        return summarize([m * (1 - spread / 2), m, m * (1 + spread / 2)])

    timing = {"full": st(full), "lcirc": st(lcirc), "compress": st(lcirc * 0.6),
              "window": st(lcirc * 0.4)}
    return {"tokens": n, "memory": n // 64, "timing": timing, "load": {"other_cores": other},
            "compressor": {"flop_s": 1e11 * frac, "gemm_fraction": frac},
            "breakdown": {"seconds": {"compress": lcirc * 0.6, "window": lcirc * 0.4},
                          "share": {"compress": 0.6, "window": 0.4}, "decode_tokens": 0},
            "full_s": full, "lcirc_s": lcirc, "speedup": full / lcirc,
            "speedup_range": [full / lcirc * 0.9, full / lcirc * 1.1],
            "flops_lcirc_half": 1e9 * n, "flops_full_half": 2e9 * n,
            "full_peak_bytes": peak, "lcirc_peak_bytes": peak}


META = {"memory_method": "rss", "gemm": {"start": {"flop_s": 1e11}, "end": {"flop_s": 0.95e11}}}


def test_sane_rows_raise_no_flag():
    rows = [_row(1024, 0.2, 0.15), _row(2048, 0.5, 0.2), _row(4096, 1.4, 0.3)]
    assert self_check(rows, META) == []
    assert "no contradictory figures" in flags_text([])


def test_full_attention_falling_with_length_is_flagged():
    rows = [_row(1024, 0.2, 0.15), _row(2048, 1.36, 0.2), _row(4096, 0.657, 0.3)]
    flags = self_check(rows, META)
    falls = [f for f in flags if f["kind"] == "falls_with_length"]
    assert len(falls) == 1 and falls[0]["method"] == "full" and falls[0]["tokens"] == 4096
    assert flagged(flags, 4096, "full") and not flagged(flags, 2048, "full")
    table = measured_table(rows, flags)
    line = next(x for x in table.splitlines() if x.strip().startswith("4096"))
    assert "!" in line
    assert "full time falls with length" in flags_text(flags)


def test_wide_spread_competing_load_gemm_and_memory_flags():
    rows = [_row(1024, 0.2, 0.15, spread=0.5, other=0.9, frac=1.3, peak=0),
            _row(2048, 0.5, 0.2)]
    rows[1]["lcirc_peak_bytes"] = None
    meta = {**META, "gemm": {"start": {"flop_s": 1e11}, "end": {"flop_s": 0.5e11}}}
    kinds = {(f["kind"], f.get("tokens"), f.get("method")) for f in self_check(rows, meta)}
    assert ("spread", 1024, "full") in kinds and ("spread", 1024, "lcirc") in kinds
    assert ("spread", 2048, "full") not in kinds
    assert ("competing_load", 1024, None) in kinds
    assert ("above_gemm_rate", 1024, "compress") in kinds
    assert ("no_memory", 1024, "full") in kinds and ("no_memory", 2048, "lcirc") in kinds
    assert ("gemm_drift", None, None) in kinds


def test_spread_at_the_limit_is_not_flagged():
    rows = [_row(1024, 0.2, 0.15, spread=0.29)]
    assert self_check(rows, META) == []
