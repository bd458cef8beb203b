"""`use_few_row_linears`: the decoding step's linear layers become `FewRowLinear`; parameters,
ties and state-dict keys stay, outputs agree with the plain model."""
import pytest
import torch
import torch.nn as nn
from lcirc_testutils import tiny_lcirc, tiny_llama

from lcirc_fast.models.decode_linears import decode_linears, use_few_row_linears, use_plain_linears
from lcirc_fast.models.generation import generate
from lcirc_fast.modules.linear import FewRowLinear


@pytest.mark.parametrize("tied", [False, True])
def test_decoding_linears_swapped_parameters_kept(tied):
    model = tiny_lcirc(tiny_llama(tied=tied), randomize_gates=True).eval()
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    layers = decode_linears(model)
    n_base = sum(type(m) is nn.Linear for m in model.base.modules())
    assert len(layers) > n_base                                  # GCA projections too
    assert use_few_row_linears(model) == len(layers)
    assert all(type(m) is FewRowLinear for m in layers)
    assert all(type(m) is nn.Linear for name, m in model.gca.named_modules()
               if name.endswith("to_kv"))                        # memory projection untouched
    assert all(p is params[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys
    head, embed = model.base.get_output_embeddings(), model.base.get_input_embeddings()
    assert (head.weight is embed.weight) == tied
    assert use_few_row_linears(model) == 0                       # idempotent
    assert use_plain_linears(model) == len(layers)
    assert all(type(m) is nn.Linear for m in layers) and list(model.state_dict()) == keys


def test_outputs_and_greedy_answers_agree():
    model = tiny_lcirc(tiny_llama(tied=True), randomize_gates=True).eval()
    g = torch.Generator().manual_seed(1)
    ctx, prompt = torch.randint(3, 256, (2, 40), generator=g), torch.randint(3, 256, (2, 9), generator=g)
    with torch.no_grad():
        mem = model.compress(ctx)
        logits = model(prompt, memory=mem).logits
        step = model(prompt[:, :1], memory=mem).logits          # 2 rows: a decoding step's size
        greedy = generate(model, prompt, memory=mem, max_new_tokens=6)
        one = generate(model, prompt[:1], memory=model.compress(ctx[:1]), max_new_tokens=6)
        use_few_row_linears(model)
        torch.testing.assert_close(model.compress(ctx).hidden, mem.hidden, rtol=0, atol=0)
        # 18 rows: more than FEW_ROWS, so the same kernels and bits as before
        torch.testing.assert_close(model(prompt, memory=mem).logits, logits, rtol=0, atol=0)
        torch.testing.assert_close(model(prompt[:, :1], memory=mem).logits, step,
                                   rtol=1e-5, atol=1e-5)
        assert torch.equal(generate(model, prompt, memory=mem, max_new_tokens=6), greedy)
        assert torch.equal(generate(model, prompt[:1], memory=model.compress(ctx[:1]),
                                    max_new_tokens=6), one)
