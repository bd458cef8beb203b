"""Model-level convergence: LCIRC learns to read its memory on a synthetic copy task.

Random 12-token passages are compressed, and the window asks the frozen (random) LLM to predict
the same passage again, which only the memory can help with. After a few hundred Adam steps the
loss with the passage's own memory must be clearly below the loss with another passage's memory
and below the loss with no memory.
"""
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama


def test_memory_becomes_informative_on_copy_task():
    torch.manual_seed(0)
    base = tiny_llama(vocab=64, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128)
    model = tiny_lcirc(base, num_latents=16, compressor_layers=2, max_segment_len=32,
                       segment_len=16, gca_layers=[0, 1])
    with torch.no_grad():
        model.compressor.pos_emb.mul_(0.05)
        model.latents.mul_(0.02)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    length = 12

    def passages(n):
        return torch.randint(0, 64, (n, length), generator=g)

    for _ in range(300):
        p = passages(16)
        loss = model(p, memory=model.compress(p, segment_len=length), labels=p).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        p, q = passages(128), passages(128)
        own = model(p, memory=model.compress(p, segment_len=length), labels=p).loss.item()
        swapped = model(p, memory=model.compress(q, segment_len=length), labels=p).loss.item()
        none = model(p, labels=p).loss.item()
    assert own < swapped - 0.15, (own, swapped)
    assert own < none - 0.15, (own, none)
