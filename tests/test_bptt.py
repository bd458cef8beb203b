"""BPTT policies: which steps get gradient, through which paths, and what they save."""
import pytest
import torch
from lcirc_testutils import lcirc_params, tiny_lcirc

from lcirc_fast import bptt

S = 6
SEG = 5


def _setup(seed=0, steps=S, query_dependent=False):
    model = tiny_lcirc(seed=seed, randomize_gates=True, query_dependent=query_dependent)
    ids = torch.randint(0, 256, (2, steps * SEG))
    bounds = list(range(0, steps * SEG + 1, SEG))
    torch.manual_seed(123)
    proj = torch.randn(2, steps * model.config.num_latents, model.config.hidden_size)
    return model, ids, bounds, proj


def _loss(hidden, proj):
    return (hidden.tanh() * proj).sum()


def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in lcirc_params(model)}


def _states(model, ids, bounds, qkv=None):
    """All states h(1..S) computed without a graph."""
    states = []
    with torch.no_grad():
        h = model.latents[None].expand(ids.shape[0], -1, -1)
        for i in range(len(bounds) - 1):
            h = _manual_step(model, h, ids[:, bounds[i]:bounds[i + 1]], qkv)
            states.append(h)
    return states


def _manual_step(model, h, seg, qkv=None):
    if qkv is not None:
        h = model.mixer(h, *qkv)
    emb = model.base.get_input_embeddings()(seg)
    return model.compressor(h, emb)


def _manual_grads(model, ids, bounds, proj, live_runs, qkv_fn=None):
    """Hand-built graph: for each run (a list of consecutive steps), re-run those steps with
    autograd from the detached state before the run (h0 itself for step 0); other slots are
    constants. Returns the summed parameter gradients over the runs, and each run's own."""
    states = _states(model, ids, bounds, None if qkv_fn is None else qkv_fn())
    total, each = None, []
    for run in live_runs:
        model.zero_grad(set_to_none=True)
        qkv = None if qkv_fn is None else qkv_fn()
        h = (model.latents[None].expand(ids.shape[0], -1, -1) if run[0] == 0
             else states[run[0] - 1].detach())
        slots = list(states)
        for s in run:
            h = _manual_step(model, h, ids[:, bounds[s]:bounds[s + 1]], qkv)
            slots[s] = h
        _loss(torch.cat(slots, 1), proj).backward()
        g = _grads(model)
        each.append(g)
        total = g if total is None else {k: total[k] + g[k] for k in g}
    model.zero_grad(set_to_none=True)
    return total, each


def _policy_grads(model, ids, bounds, proj, policy):
    model.zero_grad(set_to_none=True)
    mem = model.compress(ids, boundaries=bounds, bptt=policy)
    _loss(mem.hidden, proj).backward()
    g = _grads(model)
    model.zero_grad(set_to_none=True)
    return g, mem


def _assert_grads_close(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def _nonzero(g, prefix="compressor."):
    return sum(v.abs().sum() for k, v in g.items() if k.startswith(prefix)) > 0


def test_selective_steps_1_3_equal_sum_of_slot_gradients():
    model, ids, bounds, proj = _setup()
    got, mem = _policy_grads(model, ids, bounds, proj, bptt.Selective(steps=[1, 3]))
    want, each = _manual_grads(model, ids, bounds, proj, [[1], [3]])
    _assert_grads_close(got, want)
    assert all(_nonzero(g) for g in each)          # both selected steps contribute
    assert mem.selected_steps == [1, 3]
    for j, slot in enumerate(mem.slots):            # unselected outputs carry no graph
        assert (slot.grad_fn is not None) == (j in (1, 3)), j
    assert got["latents"].abs().sum() == 0          # no path back to h0


def test_selective_with_h0_trains_latents():
    model, ids, bounds, proj = _setup()
    got, _ = _policy_grads(model, ids, bounds, proj, bptt.Selective(steps=[0, 4]))
    want, _ = _manual_grads(model, ids, bounds, proj, [[0], [4]])
    _assert_grads_close(got, want)
    assert got["latents"].abs().sum() > 0


def test_selective_early_steps_are_not_silently_detached():
    """The reference loop's bug: {3, 7} of 20 gave no gradient and {3, 19} equalled {19}."""
    model, ids, bounds, proj = _setup(steps=20)
    g37, _ = _policy_grads(model, ids, bounds, proj, bptt.Selective(steps=[3, 7]))
    assert _nonzero(g37)
    g3_19, _ = _policy_grads(model, ids, bounds, proj, bptt.Selective(steps=[3, 19]))
    g19, _ = _policy_grads(model, ids, bounds, proj, bptt.Selective(steps=[19]))
    assert not torch.allclose(g3_19["compressor.layers.0.attn.to_q.weight"],
                              g19["compressor.layers.0.attn.to_q.weight"])


def test_selective_qd_mixer_gets_gradient_per_selected_step():
    model, ids, bounds, proj = _setup(query_dependent=True)
    q = torch.randint(0, 256, (2, 5))
    model.zero_grad(set_to_none=True)
    mem = model.compress(ids, boundaries=bounds, query_ids=q, bptt=bptt.Selective(steps=[1, 3]))
    _loss(mem.hidden, proj).backward()
    got = _grads(model)

    def qkv():
        emb = model.base.get_input_embeddings()(q)
        return model.mixer.project_memory(emb)

    want, each = _manual_grads(model, ids, bounds, proj, [[1], [3]], qkv_fn=qkv)
    _assert_grads_close(got, want)
    assert all(_nonzero(g, "mixer.") for g in each)


def test_selective_random_draw_is_reproducible_and_distinct():
    pol = bptt.Selective(3, generator=torch.Generator().manual_seed(7))
    plan = pol.plan(10)
    assert plan.count(bptt.CUT) == 3 and len(set(pol.last_selected)) == 3
    pol2 = bptt.Selective(3, generator=torch.Generator().manual_seed(7))
    assert pol2.plan(10) == plan
    assert bptt.Selective(8).plan(4).count(bptt.CUT) == 4          # all steps, each cut
    assert bptt.Selective(8, full_when_short=True).plan(4) == [bptt.CHAIN] * 4
    with pytest.raises(ValueError, match="out of range"):
        bptt.Selective(steps=[12]).plan(10)


def test_selective_respects_memory_cap():
    model = tiny_lcirc(randomize_gates=True, memory_cap=8)     # 2 newest slots of 4 latents
    ids = torch.randint(0, 256, (1, 30))
    pol = bptt.Selective(4, generator=torch.Generator().manual_seed(0))
    mem = model.compress(ids, segment_len=5, bptt=pol)
    assert len(mem) == 8 and all(s >= 4 for s in mem.selected_steps)


def test_truncated_1_only_last_step():
    model, ids, bounds, proj = _setup()
    got, mem = _policy_grads(model, ids, bounds, proj, bptt.Truncated(1))
    want, _ = _manual_grads(model, ids, bounds, proj, [[S - 1]])
    _assert_grads_close(got, want)
    assert [s.grad_fn is not None for s in mem.slots] == [False] * (S - 1) + [True]


def test_truncated_k_chains_within_window():
    model, ids, bounds, proj = _setup()
    got, mem = _policy_grads(model, ids, bounds, proj, bptt.Truncated(3))
    want, _ = _manual_grads(model, ids, bounds, proj, [[S - 3, S - 2, S - 1]])
    _assert_grads_close(got, want)
    split, _ = _manual_grads(model, ids, bounds, proj, [[S - 3], [S - 2], [S - 1]])
    assert not torch.allclose(got["compressor.norm.weight"], split["compressor.norm.weight"])


def test_full_reaches_h0_through_recurrence():
    model, ids, bounds, proj = _setup()
    proj_last = proj.clone()
    proj_last[:, : (S - 1) * model.config.num_latents] = 0     # loss reads only the last slot
    full, _ = _policy_grads(model, ids, bounds, proj_last, bptt.Full())
    want, _ = _manual_grads(model, ids, bounds, proj_last, [list(range(S))])
    _assert_grads_close(full, want)
    assert full["latents"].abs().sum() > 0
    trunc, _ = _policy_grads(model, ids, bounds, proj_last, bptt.Truncated(1))
    assert trunc["latents"].abs().sum() == 0


def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


@pytest.mark.parametrize("policy", [bptt.Truncated(1), bptt.Truncated(2),
                                    bptt.Selective(steps=[0, 2])])
def test_saved_activations_do_not_grow_with_segments(policy):
    model = tiny_lcirc()
    short = torch.randint(0, 256, (1, 4 * SEG))
    long = torch.randint(0, 256, (1, 16 * SEG))
    a = _saved_bytes(lambda: model.compress(short, segment_len=SEG, bptt=policy))
    b = _saved_bytes(lambda: model.compress(long, segment_len=SEG, bptt=policy))
    full_a = _saved_bytes(lambda: model.compress(short, segment_len=SEG, bptt=bptt.Full()))
    full_b = _saved_bytes(lambda: model.compress(long, segment_len=SEG, bptt=bptt.Full()))
    assert a == b > 0
    assert full_b > 3 * full_a


def test_no_grad_compress_saves_nothing():
    model = tiny_lcirc()
    with torch.no_grad():
        n = _saved_bytes(lambda: model.compress(torch.randint(0, 256, (1, 40)), segment_len=SEG))
    assert n == 0


def test_streaming_truncated_1_stage1_loop():
    """Stage 1: a loss after every step; each loss reaches only the newest step."""
    model, ids, bounds, proj = _setup()
    mem = model.compress(ids[:, :SEG], boundaries=[0, SEG], bptt=bptt.Truncated(1))
    for i in range(1, S):
        mem.append(model, ids[:, bounds[i]:bounds[i + 1]], bptt=bptt.Truncated(1))
        model.zero_grad(set_to_none=True)
        k = model.config.num_latents
        _loss(mem.hidden, proj[:, : (i + 1) * k]).backward()       # no "backward twice" error
        assert [s.grad_fn is not None for s in mem.slots] == [False] * i + [True]
    got = _grads(model)
    want, _ = _manual_grads(model, ids, bounds, proj, [[S - 1]])
    _assert_grads_close(got, want)


def test_streaming_truncated_k_recomputes_window():
    model, ids, bounds, proj = _setup()
    mem = model.compress(ids[:, :3 * SEG], segment_len=SEG, bptt=bptt.Truncated(2))
    for i in range(3, S):
        mem.append(model, ids[:, bounds[i]:bounds[i + 1]], bptt=bptt.Truncated(2))
    model.zero_grad(set_to_none=True)
    _loss(mem.hidden, proj).backward()
    got = _grads(model)
    want, _ = _manual_grads(model, ids, bounds, proj, [[S - 2, S - 1]])
    _assert_grads_close(got, want)


def test_streaming_selective_needs_steps():
    model, ids, bounds, proj = _setup()
    mem = model.compress(ids[:, :SEG], boundaries=[0, SEG], bptt=bptt.Selective(steps=[0]))
    with pytest.raises(ValueError, match="steps="):
        mem.append(model, ids[:, SEG:2 * SEG], bptt=bptt.Selective(2))
    for i in range(1, S):
        mem.append(model, ids[:, bounds[i]:bounds[i + 1]], bptt=bptt.Selective(steps=[0, 3]))
    model.zero_grad(set_to_none=True)
    _loss(mem.hidden, proj).backward()
    got = _grads(model)
    want, _ = _manual_grads(model, ids, bounds, proj, [[0], [3]])
    _assert_grads_close(got, want)


def test_policy_argument_errors():
    with pytest.raises(ValueError):
        bptt.Truncated(0)
    with pytest.raises(ValueError):
        bptt.Selective(0)
    with pytest.raises(TypeError, match="policy"):
        bptt.as_policy("full")


# ------------------------------------------------------------------------ specs (one reader)
@pytest.mark.parametrize("spec,policy", [
    ({"kind": "full"}, bptt.Full()),
    ({"kind": "truncated"}, bptt.Truncated(1)),
    ({"kind": "truncated", "k": 3.0}, bptt.Truncated(3)),
    ({"kind": "selective", "n": 4, "replace": True}, bptt.Selective(4, replace=True)),
    ("full", bptt.Full()),
    ("Truncated:2", bptt.Truncated(2)),
    ("selective:5", bptt.Selective(5)),
    ("selective:5:replace", bptt.Selective(5, replace=True)),
])
def test_from_spec_reads_mappings_and_text(spec, policy):
    assert bptt.from_spec(spec) == policy


def test_parse_spec_completes_the_defaults():
    assert bptt.parse_spec({"kind": "selective"}) == {"kind": "selective", "n": 8, "replace": False,
                                                       "full_when_short": False}
    assert bptt.spec_from_text("truncated:4") == {"kind": "truncated", "k": 4}


@pytest.mark.parametrize("spec,message", [
    ("sometimes", r"^--p = 'sometimes': must be a BPTT policy: full, truncated:K"),
    ("truncated:4:replace", r"^--p = 'truncated:4:replace': must be a BPTT policy"),
    ("selective:0", r"^--p\.n = 0: must be an integer >= 1 \(steps selected for gradient\)$"),
    ("full:3", r"^--p = 'full:3'"),
    ([1], r"^--p = \[1\]: must be a mapping such as \{kind: truncated, k: 1\}$"),
    ({"k": 2}, r"^--p\.kind is missing: set it to one of truncated, selective, full$"),
    ({"kind": "selective", "k": 2}, r"^--p\.k: not a setting of kind selective"),
    ({"kind": "truncated", "k": 2.5}, r"^--p\.k = 2\.5: must be an integer >= 1"),
    ({"kind": "truncated", "k": True}, r"^--p\.k = true: must be an integer >= 1"),
    ({"kind": "truncated", "k": 2**21}, r"^--p\.k = 2097152: must be at most 1048576$"),
    ({"kind": "selective", "full_when_short": "no"}, r"^--p\.full_when_short = 'no': must be true or false$"),
])
def test_bad_specs_name_the_key(spec, message):
    from lcirc_fast.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        bptt.from_spec(spec, key="--p")


@pytest.mark.parametrize("policy,steps,expected", [
    (bptt.Full(), 6, 6.0),
    (bptt.Truncated(4), 3, 3.0),
    (bptt.Truncated(2), 6, 2.0),
    (bptt.Selective(8), 5, 5.0),
    (bptt.Selective(2), 5, 2.0),
    (bptt.Selective(steps=[0, 4, 7]), 5, 2.0),
    (bptt.Selective(2, replace=True), 4, 4 * (1 - 0.75 ** 2)),
])
def test_grad_steps_count_the_steps_on_the_gradient_path(policy, steps, expected):
    assert policy.grad_steps(steps) == pytest.approx(expected)
    drawn_or_listed = isinstance(policy, bptt.Selective) and (policy.replace or policy.steps is not None)
    if not drawn_or_listed:                                  # the plan agrees
        assert sum(mode != bptt.NONE for mode in policy.plan(steps)) == expected
