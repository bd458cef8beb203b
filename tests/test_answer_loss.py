"""LCIRCForCausalLM.loss: forward's labelled loss with the vocabulary projection only from the
first labelled position on (right-padded QA batches, a memory per row, a base without
`logits_to_keep`, bad labels)."""
import pytest
import torch
from lcirc_testutils import tiny_lcirc

from lcirc_fast.errors import DataError
from lcirc_fast.models import generation


def _qa_batch(seed=0):
    """Right-padded rows of 14 / 11 / 9 tokens whose last 4 / 3 / 5 are the answer."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (n, a) in enumerate([(14, 4), (11, 3), (9, 5)]):
        mask[row, n:] = 0
        ids[row, n:] = 0
        labels[row, n - a:n] = ids[row, n - a:n]
    return ids, mask, labels


def _lm_head_rows(model):
    """A list that records the number of positions of each lm_head call."""
    rows = []
    model.base.lm_head.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[1]))
    return rows


@pytest.fixture
def model():
    return tiny_lcirc(randomize_gates=True, seed=3)


def test_equals_forward_loss_and_gradients_on_a_padded_qa_batch(model):
    ids, mask, labels = _qa_batch()
    ctx = torch.randint(3, 256, (3, 24), generator=torch.Generator().manual_seed(7))
    rows = _lm_head_rows(model)
    out = []
    for use_loss in (False, True):
        model.zero_grad(set_to_none=True)
        mem = model.compress(ctx)
        loss = (model.loss(ids, labels, memory=mem, attention_mask=mask) if use_loss else
                model(ids, memory=mem, attention_mask=mask, labels=labels).loss)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                    if p.requires_grad}))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-6)
    assert out[1][1].keys() == out[0][1].keys()
    for name, g in out[0][1].items():
        torch.testing.assert_close(out[1][1][name], g, rtol=1e-4, atol=1e-6, msg=name)
    # the earliest answer token is row 2's position 4 (predicted from position 3): 14 - 3 = 11
    assert rows == [14, 11]


def test_a_base_without_logits_to_keep_computes_every_position(model, monkeypatch):
    ids, mask, labels = _qa_batch(seed=1)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, labels=labels).loss
    monkeypatch.setattr(generation, "takes_logits_to_keep", lambda base: False)
    rows = _lm_head_rows(model)
    with torch.no_grad():
        got = model.loss(ids, labels, attention_mask=mask)
    assert rows == [14]
    torch.testing.assert_close(got, ref)


def test_every_position_labelled_is_the_language_model_loss(model):
    x = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(2))
    rows = _lm_head_rows(model)
    with torch.no_grad():
        torch.testing.assert_close(model.loss(x, x), model(x, labels=x).loss, rtol=1e-6, atol=1e-6)
    assert rows == [10, 10]


def test_bad_labels_refused(model):
    x = torch.randint(3, 256, (1, 6))
    with pytest.raises(ValueError, match="labels shape"):
        model.loss(x, torch.randint(0, 256, (1, 5)))
    with pytest.raises(DataError, match="outside the vocabulary"):
        model.loss(x, torch.full((1, 6), 999))


def test_answer_logits_are_the_full_logits_of_the_predicting_positions(model):
    ids, mask, labels = _qa_batch(seed=2)
    mem = model.compress(torch.randint(3, 256, (3, 24), generator=torch.Generator().manual_seed(4)))
    with torch.no_grad():
        full = model(ids, memory=mem, attention_mask=mask).logits
        logits, gold = model.answer_logits(ids, labels, memory=mem, attention_mask=mask)
    assert logits.dtype == torch.float32 and logits.shape == (3, 10, 256)   # positions 3 .. 12
    assert torch.equal(gold, labels[:, 4:])
    torch.testing.assert_close(logits, full[:, 3:-1])
