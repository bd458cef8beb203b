"""Packed-weight CPU GEMM (`lcirc_fast.ops.cpu_gemm`) and `PackedLinear`: the same products as
``F.linear``, packed only where no autograd graph is needed, repacked when the weight changes."""
import copy

import pytest
import torch
import torch.nn.functional as F

from lcirc_fast.modules import FeedForward
from lcirc_fast.modules.linear import PackedLinear
from lcirc_fast.ops import cpu_gemm

needs_mkl = pytest.mark.skipif(not cpu_gemm.mkl_packing_available(),
                               reason="this torch build has no MKL packed GEMM")


@pytest.fixture
def pack_calls(monkeypatch):
    """Records the row count of every weight packing."""
    calls = []
    real = cpu_gemm._pack_weight

    def counting(w, rows):
        calls.append(rows)
        return real(w, rows)

    monkeypatch.setattr(cpu_gemm, "_pack_weight", counting)
    return calls


@needs_mkl
@pytest.mark.parametrize("shape", [(8, 24), (2, 8, 24), (1, 3, 5, 24)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear(shape, bias):
    torch.manual_seed(0)
    lin = PackedLinear(24, 40, bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        got = lin(x)
        want = F.linear(x, lin.weight, lin.bias)
    assert got.shape == want.shape == (*shape[:-1], 40)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_mkl
def test_packs_once_and_again_after_an_update(pack_calls):
    torch.manual_seed(0)
    lin = PackedLinear(16, 32, bias=False)
    x = torch.randn(4, 16)
    with torch.no_grad():
        for _ in range(3):
            lin(x)
        assert pack_calls == [4]                       # one packing for three calls
        lin.weight.mul_(2.0)                            # in place: the version counter moves
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight), rtol=1e-5, atol=1e-5)
        assert pack_calls == [4, 4]
        lin(torch.randn(7, 16))                         # another row count repacks
        assert pack_calls == [4, 4, 7]
        lin.weight.data = torch.randn(32, 16)           # a new tensor: repacks, right result
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight), rtol=1e-5, atol=1e-5)
        assert pack_calls[-1] == 4 and len(pack_calls) == 4
    lin.drop_packed()
    assert lin._pack.packed is None


@needs_mkl
def test_autograd_path_is_plain_linear(pack_calls):
    """With a graph to record, no packing: gradients are F.linear's."""
    torch.manual_seed(0)
    lin = PackedLinear(16, 8, bias=True)
    ref = copy.deepcopy(lin)
    x = torch.randn(5, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    lin(x).square().sum().backward()
    F.linear(x2, ref.weight, ref.bias).square().sum().backward()
    assert pack_calls == []
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(lin.weight.grad, ref.weight.grad)
    torch.testing.assert_close(lin.bias.grad, ref.bias.grad)


def test_can_pack_only_fp32_cpu_without_graph():
    w = torch.randn(8, 4)
    x = torch.randn(2, 4)
    avail = cpu_gemm.mkl_packing_available()
    with torch.no_grad():
        assert cpu_gemm.can_pack(x, w) is avail
        assert not cpu_gemm.can_pack(x.double(), w.double())
        assert not cpu_gemm.can_pack(x.bfloat16(), w.bfloat16())
    assert not cpu_gemm.can_pack(x, w.requires_grad_(True))     # grad mode on, a leaf to train
    with torch.no_grad():
        assert cpu_gemm.can_pack(x, w) is avail
        w.ds_id = 3                                              # a ZeRO-3 parameter
        assert not cpu_gemm.can_pack(x, w)


def test_other_dtypes_and_empty_inputs_fall_back():
    lin = PackedLinear(4, 6, bias=False).double()
    with torch.no_grad():
        x = torch.randn(3, 4, dtype=torch.float64)
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight))
        assert lin._pack.packed is None
        lin32 = PackedLinear(4, 6)
        assert lin32(torch.randn(0, 4)).shape == (0, 6)


@needs_mkl
def test_moving_the_module_drops_the_copy():
    lin = PackedLinear(8, 8, bias=False)
    with torch.no_grad():
        lin(torch.randn(2, 8))
    assert lin._pack.packed is not None
    lin.double()
    assert lin._pack.entry is None


def test_state_dict_keys_are_nn_linear_s():
    ff = FeedForward(8, 16, packed=True)
    plain = FeedForward(8, 16)
    assert isinstance(ff.w1, PackedLinear) and not isinstance(plain.w1, PackedLinear)
    assert list(ff.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(ff.state_dict())
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(ff(x), plain(x), rtol=1e-5, atol=1e-5)


@needs_mkl
def test_benchmark_script_runs_and_reports_every_method():
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_gemm.py"
    proc = subprocess.run([sys.executable, str(script), "--dim", "32", "--inner", "32", "--ffn", "64",
                           "--layers", "1", "--rows", "2", "--kv-rows", "16", "--rounds", "2",
                           "--kv-rounds", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("packed_linear") == 4 and out.count("F.linear (fresh output)") == 1
    assert "K/V product [16 x 32] x [32 x 64]" in out


@needs_mkl
def test_a_packed_module_deep_copies_and_counts_flops():
    """deepcopy gets an empty cache (MKL's packed tensor cannot be copied); FlopCounterMode (a
    dispatch mode) sees the plain aten product."""
    from torch.utils.flop_counter import FlopCounterMode
    ff = FeedForward(8, 16, packed=True)
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = ff(x)
        assert ff.w1._pack.packed is not None
        twin = copy.deepcopy(ff)
        assert twin.w1._pack.packed is None
        import pickle
        assert pickle.loads(pickle.dumps(ff.w1._pack)).packed is None
        torch.testing.assert_close(twin(x), want)
        with FlopCounterMode(display=False) as counter:
            ff(x)
    assert counter.get_total_flops() == 2 * 3 * 8 * 16 * 2
