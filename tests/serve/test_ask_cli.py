"""`lcirc ask`: the answer from a memory file equals the answer from the text; one-line refusals
of a QD model without --context, a memory of another model and bad options."""
from lcirc_fast.cli import EXIT_USAGE, main

DOC = "The granary at Olm holds barley from the western fields and rye from the hills. " * 5


def err_line(capsys, rc, want_rc=EXIT_USAGE) -> str:
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert rc == want_rc and len(lines) == 1 and lines[0].startswith("lcirc ask: "), out.err
    return lines[0]


def test_ask_memory_equals_context(tiny_dirs, tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text(DOC, encoding="utf-8")
    mem = tmp_path / "doc.safetensors"
    common = ["--base", tiny_dirs["base"], "--lcirc", tiny_dirs["lcirc"]]
    assert main(["compress", str(text), "--out", str(mem), *common]) == 0
    capsys.readouterr()
    q = ["What does the granary hold?", "--max-new-tokens", "6", "--threads", "1"]
    assert main(["ask", *q, "--memory", str(mem), *common]) == 0
    from_memory = capsys.readouterr().out
    assert main(["ask", *q, "--context", str(text), *common]) == 0
    from_text = capsys.readouterr().out
    assert from_memory == from_text and from_memory.strip()
    assert main(["ask", *q, *common, "--context", str(text), "--temperature", "0.8",
                 "--top-p", "0.9", "--seed", "3"]) == 0
    sampled = capsys.readouterr().out
    assert main(["ask", *q, *common, "--context", str(text), "--temperature", "0.8",
                 "--top-p", "0.9", "--seed", "3"]) == 0
    assert capsys.readouterr().out == sampled


def test_ask_refusals(tiny_dirs, tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text(DOC, encoding="utf-8")
    mem = tmp_path / "fresh.safetensors"
    assert main(["compress", str(text), "--out", str(mem), "--base", tiny_dirs["base"]]) == 0
    capsys.readouterr()
    rc = main(["ask", "Q?", "--memory", str(mem), "--base", tiny_dirs["base"], "--lcirc",
               tiny_dirs["lcirc"]])
    assert "different model" in err_line(capsys, rc)
    rc = main(["ask", "Q?", "--memory", str(mem), "--base", tiny_dirs["base"], "--lcirc",
               tiny_dirs["qd"]])
    assert "--context" in err_line(capsys, rc)
    rc = main(["ask", "Q?", "--context", str(text), "--base", tiny_dirs["base"],
               "--max-new-tokens", "0"])
    assert "--max-new-tokens" in err_line(capsys, rc)
    rc = main(["ask", "Q?", "--context", str(tmp_path / "missing.txt"), "--base", tiny_dirs["base"]])
    assert "missing.txt" in err_line(capsys, rc)


def test_ask_fresh_weights_say_so(tiny_dirs, tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text(DOC, encoding="utf-8")
    rc = main(["ask", "Q?", "--context", str(text), "--base", tiny_dirs["base"],
               "--max-new-tokens", "2", "--dtype", "bfloat16"])
    out = capsys.readouterr()
    notes = [ln for ln in out.err.splitlines() if ln.startswith("lcirc ask: ")]
    assert rc == 0 and len(notes) == 1 and "fresh" in notes[0]
