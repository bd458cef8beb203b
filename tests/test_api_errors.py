"""Input checks of the library API: LCIRCConfig fields, memory files, token batches, generate
options and from_pretrained directories. Each error must name the problem."""
import re

import numpy as np
import pytest
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama

from lcirc_fast import LCIRCConfig, LCIRCForCausalLM
from lcirc_fast.errors import CheckpointError, ConfigError, DataError

# ---------------------------------------------------------------------- LCIRCConfig

_SIZES = ("num_latents", "compressor_layers", "max_segment_len", "compressor_heads",
          "compressor_head_dim", "compressor_ffn", "segment_len", "gca_heads", "gca_head_dim",
          "gca_ffn", "memory_cap", "hidden_size", "num_hidden_layers", "vocab_size")


@pytest.mark.parametrize("name", _SIZES)
@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "8"])
def test_config_refuses_bad_sizes(name, bad):
    with pytest.raises(ConfigError, match=rf"LCIRCConfig\.{name} = {re.escape(repr(bad))}: must be an "
                                          r"integer >= 1"):
        LCIRCConfig(**{name: bad})


@pytest.mark.parametrize("name", ["num_latents", "compressor_layers", "max_segment_len"])
def test_config_refuses_none_where_there_is_no_default(name):
    with pytest.raises(ConfigError, match=rf"{name} = None: must be an integer >= 1$"):
        LCIRCConfig(**{name: None})


@pytest.mark.parametrize("name", ["segment_len", "compressor_heads", "gca_heads", "gca_ffn"])
def test_config_zero_is_not_the_default(name):
    """0 used to be replaced by the default through `x or default`."""
    with pytest.raises(ConfigError, match=rf"{name} = 0: must be"):
        LCIRCConfig(**{name: 0, "max_segment_len": 32})


@pytest.mark.parametrize("field,bad,words", [
    ("query_dependent", "no", "true or false"),
    ("query_dependent", 1, "true or false"),
    ("backend", "gpu", "auto, torch, triton, cuda"),
    ("backend", None, "auto, torch, triton"),
    ("norm_eps", 0.0, "a positive number"),
    ("norm_eps", float("nan"), "a positive number"),
    ("norm_eps", "1e-5", "a positive number"),
    ("norm_eps", True, "a positive number"),
    ("compressor_input_layers", -1, "integer >= 0"),
    ("compressor_input_layers", None, "integer >= 0"),
    ("gca_layers", [], "non-empty list"),
    ("gca_layers", 3, "non-empty list"),
    ("gca_layers", [0, True], "indices >= 0"),
    ("gca_layers", [0, -1], "indices >= 0"),
    ("gca_layers", [0, 1.0], "indices >= 0"),
    ("gca_layers", [2, 2], "distinct"),
])
def test_config_refuses_bad_values(field, bad, words):
    with pytest.raises(ConfigError, match=rf"LCIRCConfig\.{field} .*{words}") as err:
        LCIRCConfig(**{field: bad})
    assert repr(bad) in str(err.value) or str(bad) in str(err.value)


def test_config_none_means_the_base_models_value():
    cfg = LCIRCConfig(num_latents=4, max_segment_len=32).resolve(tiny_llama().config)
    assert (cfg.compressor_heads, cfg.gca_heads, cfg.gca_ffn, cfg.segment_len) == (4, 4, 128, 16)
    explicit = LCIRCConfig(num_latents=4, max_segment_len=32, compressor_heads=2, gca_heads=1,
                           gca_ffn=7, segment_len=5).resolve(tiny_llama().config)
    assert (explicit.compressor_heads, explicit.gca_heads, explicit.gca_ffn,
            explicit.segment_len) == (2, 1, 7, 5)


def test_config_round_trips_and_normalises():
    cfg = LCIRCConfig(num_latents=np.int64(4), gca_layers=(3, 0), norm_eps=1,
                      query_dependent=True, max_segment_len=32, memory_cap=8)
    assert type(cfg.num_latents) is int and cfg.gca_layers == [3, 0] and cfg.norm_eps == 1.0
    assert LCIRCConfig.from_dict(cfg.to_dict()) == cfg
    resolved = cfg.resolve(tiny_llama().config)
    assert resolved.gca_layers == [0, 3]
    assert LCIRCConfig.from_dict(resolved.to_dict()) == resolved


def test_config_from_dict_errors():
    with pytest.raises(ConfigError, match="mapping"):
        LCIRCConfig.from_dict([("num_latents", 4)])
    with pytest.raises(ConfigError, match=r"unknown LCIRCConfig fields: \['num_latent'\]"):
        LCIRCConfig.from_dict({"num_latent": 4})
    with pytest.raises(ConfigError, match="segment_len=5000 exceeds max_segment_len=4096"):
        LCIRCConfig.from_dict({"segment_len": 5000})
    with pytest.raises(ConfigError, match="gca_layers .9. out of range"):
        LCIRCConfig(gca_layers=[0, 9]).resolve(tiny_llama().config)
    with pytest.raises(ConfigError, match="hidden_size=32 does not match"):
        LCIRCConfig(hidden_size=32).resolve(tiny_llama().config)


# ---------------------------------------------------------------------- token batches

def _calls(model):
    """Each API entry point that takes token ids, as name -> f(ids)."""
    return {
        "compress": lambda ids: model.compress(ids),
        "forward": lambda ids: model(ids),
        "generate": lambda ids: model.generate(ids, max_new_tokens=2),
    }


_WHAT = {"compress": "context_ids", "forward": "input_ids", "generate": "input_ids"}


@pytest.mark.parametrize("call", ["compress", "forward", "generate"])
def test_empty_batch_is_refused(model, call):
    with pytest.raises(DataError, match=rf"{_WHAT[call]} has an empty batch \(shape \(0, 6\)\)"):
        _calls(model)[call](torch.zeros(0, 6, dtype=torch.long))


@pytest.mark.parametrize("call", ["compress", "forward", "generate"])
@pytest.mark.parametrize("ids,words", [
    (torch.zeros(1, 2, 3, dtype=torch.long), r"must be \[batch, length\], got shape \(1, 2, 3\)"),
    (torch.zeros((), dtype=torch.long), r"must be \[batch, length\], got shape \(\)"),
    (torch.ones(1, 5), r"must hold integer token ids \(int64\), got torch.float32"),
    (torch.ones(1, 5, dtype=torch.bool), r"must hold integer token ids \(int64\), got torch.bool"),
    (torch.tensor([[3, 256]]), r"holds token id 256 outside the vocabulary \[0, 256\)"),
    (torch.tensor([[-2, 3]]), r"holds token id -2 outside the vocabulary \[0, 256\)"),
    (torch.zeros(2, 0, dtype=torch.long), r"is empty \(length 0\)"),
    ("1 2 3", r"must be a torch.Tensor of token ids, got str"),
])
def test_bad_token_ids_are_named(model, call, ids, words):
    with pytest.raises(DataError, match=rf"{_WHAT[call]} {words}"):
        _calls(model)[call](ids)


def test_compress_names_a_bad_list_item(model):
    with pytest.raises(DataError, match=r"context_ids\[1\] must be a torch.Tensor of token ids "
                                        r"\(a list holds one context per item\), got list"):
        model.compress([torch.arange(5), [1, 2, 3]])
    with pytest.raises(DataError, match=r"context_ids has an empty batch"):
        model.compress([torch.arange(5), torch.zeros(0, 3, dtype=torch.long)])


@pytest.mark.parametrize("call", ["forward", "generate"])
def test_one_dimensional_prompts_are_refused(model, call):
    """A [L] prompt would silently become one row; compress documents [N] as one context."""
    with pytest.raises(DataError, match=r"input_ids must be \[batch, length\], got shape \(5,\); "
                                        r"for one sequence pass ids\[None\]"):
        _calls(model)[call](torch.arange(5))
    assert model.compress(torch.arange(5)).batch_size == 1


def test_int32_ids_are_accepted(model):
    ids = torch.randint(0, 256, (1, 6), dtype=torch.int32)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids.long()).logits)


@pytest.mark.parametrize("labels, words", [
    (999, r"labels must be a torch.Tensor of token ids shaped like input_ids \(1, 6\), got int"),
    (torch.full((1, 6), 999), r"labels hold 999, outside the vocabulary \[0, 256\); use token ids, or -100"),
    (torch.tensor([[1, 2, -100, 3, -5, 4]]), r"labels hold -5, outside the vocabulary"),
    (torch.full((1, 6), 1.0), r"labels must hold integer token ids \(int64\), got torch.float32"),
    (torch.zeros(6, dtype=torch.long), r"labels shape \(6,\) does not match input_ids \(1, 6\)"),
])
def test_forward_checks_labels(model, labels, words):
    with pytest.raises(DataError, match=words):
        model(torch.randint(0, 256, (1, 6)), labels=labels)


def test_forward_accepts_ignored_labels(model):
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    labels = ids.clone().to(torch.int32)
    labels[0, :3] = -100
    with torch.no_grad():
        loss = model(ids, labels=labels).loss
        want = model(ids, labels=torch.cat([torch.full((1, 3), -100), ids[:, 3:]], 1)).loss
    assert torch.isfinite(loss) and torch.equal(loss, want)


def test_masks_and_segment_len_are_checked(model):
    ids = torch.randint(0, 256, (1, 6))
    with pytest.raises(DataError, match=r"attention_mask must be a torch.Tensor, got list"):
        model(ids, attention_mask=[[1] * 6])
    with pytest.raises(DataError, match=r"labels shape \(1, 5\) does not match input_ids \(1, 6\)"):
        model(ids, labels=ids[:, :5])
    for bad in (torch.full((1, 6), 2), torch.full((1, 6), 0.5)):
        with pytest.raises(DataError, match="attention_mask must hold 0 .padding. and 1 .token."):
            model.generate(ids, attention_mask=bad, max_new_tokens=1)
    bool_mask = torch.ones(1, 6, dtype=torch.bool)
    assert torch.equal(model.generate(ids, attention_mask=bool_mask, max_new_tokens=2),
                       model.generate(ids, max_new_tokens=2))
    for bad in (0, True, 4.0, "8"):
        with pytest.raises(ConfigError, match=rf"segment_len must be a positive int .*got {bad!r}"):
            model.compress(torch.randint(0, 256, (1, 20)), segment_len=bad)
    qd = tiny_lcirc(query_dependent=True)
    with pytest.raises(DataError, match="query_mask must be a torch.Tensor, got list"):
        qd.compress(torch.randint(0, 256, (1, 20)), query_ids=torch.randint(0, 256, (1, 3)),
                    query_mask=[[1, 1, 1]])


# ---------------------------------------------------------------------- generate options

@pytest.mark.parametrize("option,value,words", [
    ("eos_token_id", "x", r"eos_token_id must be a token id \(int\), a non-empty list of ids, "
                          r"or None; got 'x'"),
    ("eos_token_id", [], "eos_token_id must be a token id"),
    ("eos_token_id", [1, "2"], "eos_token_id must be a token id"),
    ("eos_token_id", 1.0, "eos_token_id must be a token id"),
    ("eos_token_id", True, "eos_token_id must be a token id"),
    ("eos_token_id", 256, r"eos_token_id holds token id 256 outside the vocabulary \[0, 256\)"),
    ("eos_token_id", [3, -1], "eos_token_id holds token id -1 outside the vocabulary"),
    ("pad_token_id", "0", "pad_token_id must be a token id"),
    ("pad_token_id", [1, 2], r"pad_token_id must be one token id, got \[1, 2\]"),
    ("max_new_tokens", "5", "max_new_tokens must be an int >= 0, got '5'"),
    ("max_new_tokens", 2.0, "max_new_tokens must be an int >= 0, got 2.0"),
    ("max_new_tokens", True, "max_new_tokens must be an int >= 0, got True"),
    ("max_new_tokens", -1, "max_new_tokens must be an int >= 0, got -1"),
    ("temperature", "hot", "temperature must be a finite number, got 'hot'"),
    ("temperature", float("nan"), "temperature must be a finite number, got nan"),
    ("top_k", 0, r"top_k must be an int >= 1 \(or None: no top-k filter\), got 0"),
    ("top_k", 2.5, "top_k must be an int >= 1"),
    ("top_p", 0.0, r"top_p must be a number in \(0, 1\]"),
    ("top_p", 1.5, r"top_p must be a number in \(0, 1\]"),
    ("top_p", "0.9", r"top_p must be a number in \(0, 1\]"),
    ("do_sample", "yes", "do_sample must be True or False, got 'yes'"),
    ("use_cache", 1, "use_cache must be True or False, got 1"),
    ("generator", 42, "generator must be a torch.Generator or None, got int"),
])
def test_generate_options_are_checked(model, option, value, words):
    with pytest.raises(ConfigError, match=words):
        model.generate(torch.randint(0, 256, (1, 4)), **{"max_new_tokens": 2, option: value})


def test_generate_accepts_eos_forms(model):
    x = torch.randint(0, 256, (1, 4))
    greedy = model.generate(x, max_new_tokens=3)
    first = int(greedy[0, 4])
    for eos in (first, [first], (7, first), torch.tensor([first]), torch.tensor(first)):
        assert model.generate(x, max_new_tokens=3, eos_token_id=eos).shape == (1, 5)
    sampled = model.generate(x, max_new_tokens=3, do_sample=True, top_k=5, top_p=0.9,
                             temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (1, 7)


# ---------------------------------------------------------------------- from_pretrained

@pytest.fixture
def saved(tmp_path):
    model = tiny_lcirc()
    model.save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


def _pretrained_error(directory, base, *words):
    with pytest.raises(CheckpointError) as err:
        LCIRCForCausalLM.from_pretrained(directory, base=base)
    msg = str(err.value)
    for w in words:
        assert w in msg, msg
    return msg


def test_from_pretrained_round_trip(saved):
    model, directory = saved
    loaded = LCIRCForCausalLM.from_pretrained(directory, base=tiny_llama())
    assert loaded.fingerprint() == model.fingerprint()


def test_from_pretrained_missing_directory_and_files(saved, tmp_path):
    model, directory = saved
    _pretrained_error(tmp_path / "nowhere", model.base, f"no LCIRC model directory at "
                      f"{tmp_path / 'nowhere'}", "save_pretrained")
    (directory / "lcirc_model.safetensors").unlink()
    _pretrained_error(directory, model.base,
                      f"no lcirc_model.safetensors at {directory / 'lcirc_model.safetensors'}")
    (directory / "lcirc_config.json").unlink()
    _pretrained_error(directory, model.base,
                      f"no lcirc_config.json at {directory / 'lcirc_config.json'}")


@pytest.mark.parametrize("text,words", [
    ('{"lcirc_config": {"num_latents": 4,', "is not valid JSON"),
    ("\udcff", "is not valid JSON"),
    ("[1, 2]", "has no 'lcirc_config' object"),
    ('{"base_model": "x"}', "has no 'lcirc_config' object"),
    ('{"lcirc_config": {"num_latents": 0}}', "LCIRCConfig.num_latents = 0: must be an integer >= 1"),
    ('{"lcirc_config": {"num_latent": 4}}', "unknown LCIRCConfig fields: ['num_latent']"),
])
def test_from_pretrained_bad_config(saved, text, words):
    model, directory = saved
    path = directory / "lcirc_config.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    _pretrained_error(directory, model.base, str(path), words)


def test_from_pretrained_other_base(saved):
    model, directory = saved
    _pretrained_error(directory, tiny_llama(hidden=32, heads=2, kv_heads=1),
                      str(directory / "lcirc_config.json"),
                      "was saved for a base model with hidden_size=64, but the given base has 32")


def test_from_pretrained_truncated_or_corrupt_weights(saved):
    model, directory = saved
    path = directory / "lcirc_model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _pretrained_error(directory, model.base, str(path), "truncated or corrupt")
    path.write_bytes(b"\x00" * 64)
    _pretrained_error(directory, model.base, str(path), "truncated or corrupt")


def _rewrite_weights(path, edit, meta=None):
    """Rewrite a weights file through `edit(tensors)`, re-signed (or with `meta` as given)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lcirc_fast.memory import content_checksum

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta is None:
            meta = f.metadata()
            edit(tensors)
            meta["checksum"] = content_checksum(meta, tensors)
        else:
            edit(tensors)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("edit,words", [
    (lambda t: t.pop("latents"), "missing ['latents']"),
    (lambda t: t.update(stray=torch.zeros(1)), "unexpected ['stray']"),
    (lambda t: t.update(latents=torch.zeros(3, 64)),
     "tensor 'latents' has shape (3, 64), the config needs (4, 64)"),
    (lambda t: t["latents"].fill_(float("nan")), "tensor 'latents' holds NaN or Inf"),
])
def test_from_pretrained_bad_tensors(saved, edit, words):
    model, directory = saved
    path = directory / "lcirc_model.safetensors"
    _rewrite_weights(path, edit)
    _pretrained_error(directory, model.base, str(path), words)


def test_from_pretrained_refuses_foreign_safetensors(saved):
    model, directory = saved
    path = directory / "lcirc_model.safetensors"
    _rewrite_weights(path, lambda t: None, meta={"format": "pt"})
    _pretrained_error(directory, model.base, str(path), "not an lcirc_fast model file")


# ---------------------------------------------------------------------- reference checkpoints

def test_official_checkpoint_unreadable(model, tmp_path):
    good = tmp_path / "ref.pt"
    torch.save(model.official_state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"{truncated} cannot be read as a PyTorch "
                                              rf"checkpoint .*truncated, corrupt"):
        model.load_official_checkpoint(truncated)
    code = tmp_path / "code.pt"
    torch.save({"f": len}, code)
    with pytest.raises(CheckpointError, match=rf"{code} cannot be read"):
        model.load_official_checkpoint(code)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(CheckpointError, match=rf"{tensor} is not a reference LCIRC checkpoint: "
                                              rf"it holds a Tensor"):
        model.load_official_checkpoint(tensor)
    model.load_official_checkpoint(good)


# ---------------------------------------------------------------------- error classes

def test_misuse_raises_lcirc_errors(model):
    """Every refusal of the API is an LCIRCError (one line on the command line)."""
    from lcirc_fast import CompressedMemory, bptt
    from lcirc_fast.errors import LCIRCError

    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        mem = model.compress(ids)
        stacked = model.compress([torch.arange(8), torch.arange(20)])
    qd = tiny_lcirc(query_dependent=True)
    cases = {
        "either segment_len or boundaries": lambda: model.compress(ids, segment_len=8,
                                                                   boundaries=[0, 20]),
        "longer than the position table": lambda: model.compress(ids, segment_len=33),
        "query_ids given to a model built with query_dependent=False":
            lambda: model.compress(ids, query_ids=ids[:, :3]),
        "pass query_ids": lambda: qd.compress(ids),
        "context_ids is an empty list": lambda: model.compress([]),
        "memory has batch size 2 but the input has batch size 3":
            lambda: model(torch.randint(0, 256, (3, 4)), memory=mem),
        "cannot append to a stacked memory": lambda: stacked.append(model, ids[:, :8]),
        "segment_ids has batch size 1 but the memory has 2":
            lambda: mem.append(model, ids[:1, :8]),
        "Selective(n) draws among a known number of steps":
            lambda: mem.append(model, ids[:, :8], bptt=bptt.Selective(2)),
        "stack needs at least one memory": lambda: CompressedMemory.stack([]),
        "cannot stack memories made by different models": lambda: CompressedMemory.stack(
            [mem, qd.compress(ids, query_ids=ids[:, :3])]),
    }
    for words, call in cases.items():
        with pytest.raises(LCIRCError) as err:
            call()
        assert words in str(err.value), (words, str(err.value))


def test_official_mismatch_is_a_checkpoint_error(model):
    wide = tiny_lcirc(max_segment_len=64)
    with pytest.raises(CheckpointError, match="set LCIRCConfig.max_segment_len=64"):
        model.load_official_checkpoint(wide.official_state_dict())
    qd = tiny_lcirc(query_dependent=True)
    with pytest.raises(CheckpointError, match="checkpoint is QD-LCIRC .has a mixer. but the "
                                              "model is plain LCIRC"):
        model.load_official_checkpoint(qd.official_state_dict())


def test_from_pretrained_detects_a_flipped_weight_byte(saved):
    model, directory = saved
    path = directory / "lcirc_model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[8 + int.from_bytes(raw[:8], "little") + 3] ^= 0x10
    path.write_bytes(bytes(raw))
    _pretrained_error(directory, model.base, str(path), "fails its checksum",
                      "save the model again")


@pytest.mark.parametrize("meta,words", [
    ({"format": "lcirc_fast.model", "version": "2"}, "lacks its checksum"),
    ({"format": "lcirc_fast.model", "version": "7", "checksum": "0"},
     "model format version '7'; this lcirc_fast reads versions 1 and 2"),
])
def test_from_pretrained_checks_the_weights_version(saved, meta, words):
    model, directory = saved
    path = directory / "lcirc_model.safetensors"
    _rewrite_weights(path, lambda t: None, meta=meta)
    _pretrained_error(directory, model.base, str(path), words)


def test_from_pretrained_reads_version_1_with_a_warning(saved):
    model, directory = saved
    path = directory / "lcirc_model.safetensors"
    _rewrite_weights(path, lambda t: None, meta={"format": "lcirc_fast.model", "version": "1"})
    with pytest.warns(UserWarning, match=r"has no checksum \(model format version 1\)"):
        loaded = LCIRCForCausalLM.from_pretrained(directory, base=tiny_llama())
    assert loaded.fingerprint() == model.fingerprint()


# ---------------------------------------------------------------------- base-model directories

@pytest.mark.parametrize("weights", ["pytorch_model.bin", "pytorch_model.bin.index.json"])
def test_load_base_refuses_pickled_weights(weights, tmp_path):
    import pickle

    from lcirc_fast.models import load_base

    base = tiny_llama(vocab=64, hidden=16, layers=1, heads=2, kv_heads=1, ffn=32)
    base.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "moved.safetensors")
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / weights).write_bytes(pickle.dumps({"w": Planted()}))
    with pytest.raises(ConfigError, match=rf"base model {tmp_path} holds pickled weights \({weights}\), which "
                                          r"lcirc_fast refuses to load; it wants safetensors"):
        load_base(tmp_path)
    assert not marker.exists()
    (tmp_path / "moved.safetensors").rename(tmp_path / "model.safetensors")   # beside safetensors: ignored
    loaded, _ = load_base(tmp_path)
    assert not marker.exists()
    assert torch.equal(loaded.lm_head.weight, base.lm_head.weight)
