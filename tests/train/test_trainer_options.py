"""Trainer options of the pass-key and copy recipes: batches (train.batch_size), the haystack
curriculum, needles in the compressed middle, the contrast term, memory gradient centring,
stage-2 validation with the swapped memory and pass-key digits, and exact resume with batches."""
import json
import math
import random

import pytest
import torch

from lcirc_fast.errors import ConfigError
from lcirc_fast.memory import CompressedMemory
from lcirc_fast.training import Trainer, config_from_dict, run_training
from lcirc_fast.training.builders import hay_at, synthetic_qa_sample

S2 = {"stage": 2, "data": {"qa_needle": "middle", "qa_context": [40, 70]},
      "lcirc": {"init": {"attn_gate_init": 0.5}}}


def _cfg(tiny_cfg, base=None, **sections):
    d = tiny_cfg(**(base or {}))
    for k, v in sections.items():
        d.setdefault(k, {}).update(v) if isinstance(v, dict) else d.__setitem__(k, v)
    return config_from_dict(d)


@pytest.mark.parametrize("section, message", [
    ({"train": {"batch_size": 0}}, r"^train\.batch_size = 0: must be an integer >= 1$"),
    ({"train": {"contrast_weight": -1}}, r"^train\.contrast_weight = -1: must be a number >= 0"),
    ({"train": {"contrast_weight": 1.0}},
     r"^train\.contrast_weight = 1\.0 compares .* train\.batch_size >= 2 \(got 1\)$"),
    ({"train": {"memory_grad_centering": "yes"}},
     r"^train\.memory_grad_centering = 'yes': must be true or false$"),
    ({"train": {"memory_grad_centering": True}},
     r"^train\.memory_grad_centering = true compares .* train\.batch_size >= 2 \(got 1\)$"),
    ({"train": {"contrast_margin": "wide"}},
     r"^train\.contrast_margin = 'wide': must be a number >= 0$"),
    ({"stage": 2, "data": {"hay_schedule": []}},
     r"^data\.hay_schedule = \[\]: must be a non-empty list"),
    ({"stage": 2, "data": {"hay_schedule": [[32, 5]]}},
     r"^data\.hay_schedule\[0\]\[1\] = 5: the first entry must start at step 0$"),
    ({"stage": 2, "data": {"hay_schedule": [[32, 0], [96, 0]]}},
     r"^data\.hay_schedule\[1\]\[1\] = 0: steps must increase"),
    ({"stage": 2, "data": {"hay_schedule": [[32, 0], [0, 10]]}},
     r"^data\.hay_schedule\[1\]\[0\] = 0: must be an integer >= 1"),
    ({"stage": 2, "data": {"hay_schedule": [[32, 0], 96]}},
     r"^data\.hay_schedule\[1\] = 96: must be a pair \[tokens, from_step\]$"),
    ({"stage": 2, "data": {"hay_schedule": "32@0"}}, r"^data\.hay_schedule = '32@0': must be a non-empty list"),
    ({"data": {"hay_schedule": [[32, 0]]}}, r"^data\.hay_schedule shapes the stage-2 QA samples; it needs stage: 2"),
    ({"stage": 2, "data": {"qa_val_lengths": [40, -1]}}, r"^data\.qa_val_lengths\[1\] = -1: must be an integer >= 1$"),
    ({"stage": 2, "data": {"qa_template": "mc_letter"}},
     r"^data\.qa_template = 'mc_letter': must be one of read_answer"),
    ({"stage": 2, "data": {"qa_template": "passage_only"}}, r"^data\.qa_template = 'passage_only' applies to .* kjv"),
    ({"data": {"segmenting": "even"}}, r"^data\.segmenting = 'even': must be one of random, fixed, balanced$"),
])
def test_bad_values_name_their_key(tiny_cfg, section, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tiny_cfg, **section)


def test_hay_schedule_and_needles_in_the_middle(tiny_cfg):
    assert [hay_at([[32, 0], [96, 100]], s) for s in (0, 99, 100, 10**6)] == [32, 32, 96, 96]
    assert hay_at(None, 5) is None
    rng = random.Random(0)
    for _ in range(50):     # head 8 + tail 8 of a 16-token window; the needle 3 k k k k 3 between
        s = synthetic_qa_sample(rng, 64, 24, window=16)
        ids = s.input_ids.tolist()
        start = ids.index(3)
        assert 8 <= start and start + 6 <= len(ids) - 8 and ids[start + 5] == 3
    with pytest.raises(ValueError, match="compressed"):
        synthetic_qa_sample(rng, 64, 4, window=32)
    cfg = _cfg(tiny_cfg, S2, data={"hay_schedule": [[40, 0], [60, 1]]},
               train={"batch_size": 3, "eval_every": 0, "save_every": 0})
    tr = Trainer(cfg, resume="none", quiet=True)
    try:
        lengths = []
        for step in (0, 1, 5):
            tr.opt_step = step
            lengths.append({it[1].input_ids.numel() for it in tr.objectives.qa_items(step, tr.opt_step)})
        assert lengths == [{53}, {73}, {73}]    # BOS + n + needle 6 + query 2 + key 4
    finally:
        tr.close()


def test_a_batch_is_the_token_mean_of_its_samples(tiny_cfg):
    """Batch 3 (different lengths, padded, memories stacked) = the samples one by one."""
    common = dict(data={"segmenting": "random", "segment_min": 8, "segment_max": 24},
                  train={"eval_every": 0, "save_every": 0, "bptt": {"kind": "full"}})
    tr = Trainer(_cfg(tiny_cfg, S2, **common), resume="none", quiet=True)
    try:
        singles = []
        for micro in range(3):
            items = tr.objectives.qa_items(micro, 0)
            n = int((items[0][3][1:] != -100).sum())
            singles.append((float(tr.objectives.stage2(micro, 0)[0].detach()), n))
        lengths = {tr.objectives.qa_items(m, 0)[0][1].input_ids.numel() for m in range(3)}
        assert len(lengths) > 1     # the batch below pads and stacks
        tr.cfg.train.batch_size = 3
        batch = float(tr.objectives.stage2(0, 0)[0].detach())
    finally:
        tr.close()
    mean = sum(x * n for x, n in singles) / sum(n for _, n in singles)
    assert batch == pytest.approx(mean, rel=1e-5)


def test_contrast_and_centering(tiny_cfg):
    cfg = _cfg(tiny_cfg, S2, train={"batch_size": 4, "contrast_weight": 0.5, "contrast_margin": 2.0,
                                    "memory_grad_centering": True, "max_steps": 2, "grad_accum": 1,
                                    "eval_every": 0, "save_every": 0})
    res = run_training(cfg, resume="none", quiet=True)
    recs = [json.loads(x) for x in open(f"{cfg.output_dir}/log.jsonl") if '"loss"' in x]
    for r in recs:
        assert r["loss"] >= r["loss_own"]          # the hinge adds a term >= 0
        want = r["loss_own"] + 0.5 * max(0.0, 2.0 - (r["loss_swapped"] - r["loss_own"]))
        assert r["loss"] == pytest.approx(want, rel=1e-5)
        assert r["samples_per_s"] > 0 and r["tokens_per_s"] > r["samples_per_s"]
    assert res["opt_step"] == 2
    tr = Trainer(cfg, resume="none", quiet=True)
    try:   # the memory's gradient has batch mean 0 with centring
        leaf = torch.randn(4, 6, tr.model.config.hidden_size, requires_grad=True)
        mem = CompressedMemory([], None, 1, torch.full((4,), 6), cap=None,
                               lengths=torch.full((4,), 6), hidden=leaf, owner=tr.model)
        ids = torch.randint(4, 200, (4, 10))
        loss, _ = tr.objectives.objective(ids, None, ids, mem)
        loss.backward()
        assert leaf.grad.abs().sum() > 0
        torch.testing.assert_close(leaf.grad.mean(0), torch.zeros_like(leaf.grad[0]), atol=1e-7, rtol=0)
    finally:
        tr.close()


def test_validation_reports_each_task_when_there_are_several(tiny_cfg):
    import dataclasses

    cfg = _cfg(tiny_cfg, S2, data={"qa_val_lengths": [40, 60], "val_docs": 3},
               train={"batch_size": 2, "eval_every": 0, "save_every": 0})
    tr = Trainer(cfg, resume="none", quiet=True)
    try:
        assert "by_task" not in tr.validate()                 # one task: no breakdown
        val = tr.validator.parts.data.qa_val
        val[:] = [dataclasses.replace(s, task="niah_single" if k % 3 else "niah_multikey")
                  for k, s in enumerate(val)]
        m = tr.validate()
        assert set(m["by_task"]) == {"niah_single", "niah_multikey"}
        parts = m["by_task"].values()
        assert sum(t["val_tokens"] for t in parts) == m["val_tokens"]
        loss = sum(t["val_loss"] * t["val_tokens"] for t in parts) / m["val_tokens"]
        assert loss == pytest.approx(m["val_loss"], rel=1e-12)
        assert m["by_task"]["niah_single"]["val_loss"] != m["by_task"]["niah_multikey"]["val_loss"]
    finally:
        tr.close()


class _DigitTokenizer:
    pad_token_id = 0

    def decode(self, ids):
        return str(ids[0] % 10) if ids[0] >= 100 else "x"


def test_validation_scores_own_swapped_and_digits(tiny_cfg):
    cfg = _cfg(tiny_cfg, S2, data={"qa_val_lengths": [40, 60], "val_docs": 3},
               train={"batch_size": 2, "eval_every": 0, "save_every": 0})
    tr = Trainer(cfg, resume="none", quiet=True)
    try:
        m = tr.validate()
        assert set(m["by_length"]) == {"40", "60"} and m["val_tokens"] == 6 * 4
        for k in ("val_loss", "val_loss_swapped_memory", "val_loss_no_memory", "val_answer_acc",
                  "val_exact", "val_answer_acc_swapped_memory"):
            assert math.isfinite(m[k])
        assert m["val_loss"] != m["val_loss_swapped_memory"] != m["val_loss_no_memory"]
        tr.validator.tok = _DigitTokenizer()     # pass-key digits: answer tokens that decode to one digit
        ids = torch.tensor([[5, 6, 7, 101, 102, 103], [5, 6, 7, 104, 105, 106]])
        lab = torch.full_like(ids, -100)
        lab[:, 3:] = ids[:, 3:]
        with torch.no_grad():
            logits = tr.model(ids).logits
        rows = tr.validator.score_rows(ids, None, lab, None, ["passkey", "fact"])
        hits = (logits[0, 2:5].argmax(-1) == ids[0, 3:]).double()
        assert rows[0, 5:8].tolist() == hits.tolist() and rows[0, 10:13].tolist() == [1.0] * 3
        assert rows[1, 5:].sum() == 0                  # not a pass key
        metrics = tr.validator.qa_metrics(torch.stack([rows.sum(0)] * 3))
        assert metrics["val_digit_acc"] == pytest.approx(float(hits.mean()))
        assert len(metrics["val_digit_acc_by_pos"]) == 5
    finally:
        tr.close()


@pytest.mark.parametrize("stage", [1, 2])
def test_batched_resume_is_exact(tiny_cfg, tmp_path, stage):
    sec = dict(stage=stage, train={"batch_size": 2, "max_steps": 4, "grad_accum": 2, "eval_every": 2,
                                   "save_every": 2, "contrast_weight": 0.3})
    if stage == 2:
        sec["data"] = {"qa_needle": "middle", "qa_context": [40, 70], "hay_schedule": [[40, 0], [60, 3]]}
    full = run_training(_cfg(tiny_cfg, dict(output_dir=str(tmp_path / "a")), **sec), resume="none", quiet=True)
    cfg_b = _cfg(tiny_cfg, dict(output_dir=str(tmp_path / "b")), **sec)
    assert run_training(cfg_b, resume="none", quiet=True, stop_at=2)["opt_step"] == 2
    resumed = run_training(cfg_b, resume="auto", quiet=True)
    assert [h["loss"] for h in full["history"]] == [h["loss"] for h in resumed["history"]]
    assert full["val"] == resumed["val"]
    if stage == 1:   # two document streams, both memories in the checkpoint
        from lcirc_fast.training.checkpoint import load_state
        st = load_state(tmp_path / "b" / "checkpoints" / "step0000004", "trainer_rank0")
        assert isinstance(st["memory"], list) and len(st["memory"]) == 2


def test_copy_mix_mixes_copy_documents_into_stage1(tiny_cfg):
    from lcirc_fast.data import stage1_stream

    docs = [torch.arange(i, i + 120) % 200 + 4 for i in range(12)]

    def steps(**kw):
        it = stage1_stream(docs, 16, torch.Generator().manual_seed(0), "fixed", 20, **kw)
        return [next(it) for _ in range(60)]

    plain = steps()
    assert all(torch.equal(a.window, b.window) for a, b in zip(plain, steps(copy_mix=0.0)))
    mixed = steps(copy_mix=0.5)
    copies = [s for s in mixed if torch.equal(s.window, s.segment[:16]) and s.step == 0]
    assert 0 < len(copies) < len(mixed)                # both kinds of document
    assert not any(torch.equal(s.window, s.segment[:16]) for s in plain)
    with pytest.raises(ValueError, match="copy_mix"):
        steps(copy_mix=1.5)
    with pytest.raises(ConfigError, match=r"^data\.copy_mix = 2: must be a number in \[0, 1\]"):
        _cfg(tiny_cfg, data={"copy_mix": 2})
    with pytest.raises(ConfigError, match=r"^data\.copy_mix = 0\.5 mixes .* stage: 1"):
        _cfg(tiny_cfg, data={"copy_mix": 0.5, "repeat_passage": True})
    res = run_training(_cfg(tiny_cfg, data={"copy_mix": 0.5}, train={"batch_size": 2, "eval_every": 0,
                                                                     "save_every": 0, "max_steps": 2}),
                       resume="none", quiet=True)
    assert res["opt_step"] == 2 and all(math.isfinite(h["loss"]) for h in res["history"])
