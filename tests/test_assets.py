"""Real offline assets: SmolLM2, the KJV text and the Llama-2 SentencePiece tokenizer."""

import importlib.util
import os

import pytest
import torch

from lcirc_fast import assets


def test_smollm2_dir_found_without_import():
    path = assets.smollm2_dir()
    assert (path / assets.SMOLLM2_GGUF).is_file()


def test_load_smollm2_greedy_rome():
    model, tok = assets.load_smollm2()
    assert not model.training
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        576,
        30,
        9,
        3,
    )
    assert next(model.parameters()).dtype == torch.float32
    ids = tok("The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Rome" in tok.decode(out[0, ids.shape[1] :])


def test_kjv_books_and_text():
    books = assets.kjv_books()
    assert len(books) == 66
    names = [n for n, _ in books]
    assert names[0] == "Genesis" and names[-1] == "Revelation"
    assert len(set(names)) == 66
    assert books[0][1].startswith("In the beginning God created the heaven and the earth.")
    n_verses = sum(text.count("\n") + 1 for _, text in books)
    assert 31_000 <= n_verses <= 31_200
    text = assets.kjv_text()
    assert text.startswith("In the beginning") and len(text) > 4_000_000
    assert assets.kjv_books() is not assets.kjv_books()  # callers get their own list


def test_llama_sp_tokenizer_matches_sentencepiece():
    import sentencepiece as spm

    tok = assets.llama_sp_tokenizer()
    assert len(tok) == 32000 and tok.bos_token_id == 1 and tok.eos_token_id == 2
    src = os.path.join(
        importlib.util.find_spec("mistral_common").submodule_search_locations[0], "data", "tokenizer.model.v1"
    )
    ref = spm.SentencePieceProcessor(model_file=src)
    samples = [
        "In the beginning God created the heaven and the earth.",
        "Hello  world\n\n x",
        " leading space",
        "Question: which book? Answer:",
        "ünïcödé 你好",
    ]
    for s in samples:
        ids = tok(s).input_ids
        assert ids == [1] + ref.encode(s), s
        assert tok.decode(ids, skip_special_tokens=True) == s
    chunk = assets.kjv_text()[:20_000]
    assert tok(chunk, add_special_tokens=False).input_ids == ref.encode(chunk)


def test_publish_dir_race_keeps_winner(tmp_path):
    final = tmp_path / "final"
    first = tmp_path / "a"
    first.mkdir()
    (first / "x").write_text("winner")
    assets._publish_dir(first, final)
    second = tmp_path / "b"
    second.mkdir()
    (second / "x").write_text("loser")
    assets._publish_dir(second, final)  # another process already published: no error
    assert (final / "x").read_text() == "winner"
    assert not second.exists()


def test_missing_package_error_names_it():
    with pytest.raises(FileNotFoundError, match="no_such_pkg_xyz"):
        assets._package_dir("no_such_pkg_xyz")
