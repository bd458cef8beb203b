"""The pass-key results recorded in docs/results/ (docs/results.md §13): their predictions files
give the committed scores again, and the counts the docs quote."""
import json
from pathlib import Path

import pytest

from lcirc_fast.eval import passkey as pk

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"

# run directory -> {(mode, length): strict count of 24} as docs/results.md §13 and the README quote
QUOTED = {
    "passkey_eos_final": {("lcirc", 256): 19, ("lcirc", 512): 22,
                          ("lcirc_swapped", 256): 0, ("lcirc_swapped", 512): 0},
    "passkey_eos_best": {("lcirc", 256): 24, ("lcirc", 512): 20,
                         ("lcirc_swapped", 256): 0, ("lcirc_swapped", 512): 0},
}


def _records(run: str) -> list[dict]:
    lines = (RESULTS / run / "predictions.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


@pytest.mark.parametrize("run", sorted(QUOTED))
def test_recorded_predictions_give_the_committed_scores(run):
    recs = _records(run)
    saved = json.loads((RESULTS / run / "passkey.json").read_text())
    rows = pk.rows_from_predictions(recs)
    assert rows == saved["rows"]
    assert pk.by_length(rows) == saved["by_length"]
    assert saved["failures"] == [] and all(r["answer"] is not None for r in recs)


@pytest.mark.parametrize("run", sorted(QUOTED))
def test_recorded_strict_counts_are_the_quoted_ones(run):
    recs = _records(run)
    counts: dict = {}
    for r in recs:
        cell = (r["mode"], r["length"])
        counts[cell] = counts.get(cell, 0) + int(pk.strict_passkey(r["answer"], r["key"]))
    assert counts == QUOTED[run]
    assert len(recs) == 96
    # the swapped control reads the partner's memory: its answers are scored against that key too
    swapped = [r for r in recs if r["mode"] == "lcirc_swapped"]
    assert all(r["memory_key"] != r["key"] for r in swapped)
