"""The eager reference path computes the same function as the package's model."""
import torch

from lcirc_fast.bench.presets import get_preset
from lcirc_fast.bench.reference import reference_compress, reference_forward
from lcirc_fast.bench.sweep import _decode_rate, build_model


@torch.no_grad()
def test_reference_matches_model():
    model = build_model(get_preset("tiny"), "cpu", torch.float32)
    ctx, win = torch.randint(0, 256, (2, 70)), torch.randint(0, 256, (2, 20))
    mem = model.compress(ctx)
    ref_mem = reference_compress(model, ctx)
    torch.testing.assert_close(ref_mem, mem.hidden, rtol=1e-4, atol=1e-4)
    got = model(win, memory=mem).logits
    want = reference_forward(model, win, ref_mem).logits
    torch.testing.assert_close(want, got, rtol=1e-4, atol=1e-4)
    plain = model.base(input_ids=win).logits
    assert (got - plain).abs().max() > 1e-3   # the memory really changes the output


@torch.no_grad()
def test_decode_rates_are_positive_for_both_modes():
    model = build_model(get_preset("tiny"), "cpu", torch.float32)
    mem = model.compress(torch.randint(0, 256, (1, 40)))
    for cached in (True, False):
        assert _decode_rate(model, torch.randint(0, 256, (1, 8)), mem, 2, cached,
                            torch.device("cpu")) > 0
