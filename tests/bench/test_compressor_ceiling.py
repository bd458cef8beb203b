"""benchmarks/compressor_ceiling.py: the compressor's parts timed alone, their sum as a ceiling."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compressor_ceiling.py"


def _load():
    spec = importlib.util.spec_from_file_location("compressor_ceiling", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parts_cover_the_counted_flops_and_their_calls():
    """Every product compression runs, called as often as compression calls it: their FLOPs add
    up to `lcirc bench`'s count, with unequal segment lengths timed apart."""
    mod = _load()
    preset, model, ctx = mod.build("tiny", 32 + 48, None, None)   # 48 tokens: 3 segments of 16
    work, calls, flop = mod.workloads(preset, model, ctx, 32 + 48)
    layers = model.config.compressor_layers
    attn = [n for n in work if n.startswith("latent attention")]
    proj = [n for n in work if n.split()[0] in ("to_q", "to_out", "FFN")]
    assert len(proj) == 4 and all(calls[n] == 3 * layers for n in proj)
    assert sum(calls[n] for n in attn) == 3 * layers
    parts = sum(flop[n] * calls[n] for n in work if n != "compress")
    assert parts == pytest.approx(flop["compress"], rel=1e-9)

    preset, model, ctx = mod.build("tiny", 32 + 50, None, None)   # balanced: 18 + 16 + 16
    work, calls, flop = mod.workloads(preset, model, ctx, 32 + 50)
    attn = {n: calls[n] for n in work if n.startswith("latent attention")}
    assert attn == {"latent attention [4 queries x 16 keys]": 2 * layers,
                    "latent attention [4 queries x 18 keys]": layers}
    parts = sum(flop[n] * calls[n] for n in work if n != "compress")
    assert parts == pytest.approx(flop["compress"], rel=1e-9)


def test_script_prints_both_fractions_and_refuses_an_empty_context():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--tokens", "96",
                           "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "(GEMM reference)" in out and "sum of the parts" in out and "compress (measured)" in out
    m = re.search(r"measured ([0-9.]+), ceiling of the parts ([0-9.]+)", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0
    assert "the parts hold 1.0000 of it" in out
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--tokens", "16"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.startswith("compressor_ceiling: 16 tokens fit in the 32-token window")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("argv,message", [
    (["--tokens", "0"], "compressor_ceiling: --tokens must be >= 1, got 0"),
    (["--latents", "-1"], "compressor_ceiling: --latents must be >= 1, got -1"),
    (["--model", "nope"], "compressor_ceiling: unknown model 'nope'"),
])
def test_bad_arguments_are_one_line_errors(argv, message):
    mod = _load()
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert mod.main(argv) == 2
    assert err.getvalue().startswith(message) and err.getvalue().count("\n") == 1
