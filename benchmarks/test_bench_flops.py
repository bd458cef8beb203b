"""The analytic model itself must stay cheap: a 4K..1M Llama-2-7B table in milliseconds."""
from lcirc_fast import flops as fl
from lcirc_fast.bench.presets import get_preset


def test_flops_table_llama2_7b(benchmark):
    p = get_preset("llama2-7b")
    rows = benchmark(fl.sweep, p.llm, p.shape(), fl.DEFAULT_LENGTHS)
    assert rows[-1]["tokens"] == 1 << 20
