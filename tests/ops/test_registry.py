"""The ops registry: the backend records, lookup, per-op fallback, bind errors, the CUDA extension's
registration (with a CPU stand-in for its ops), modules bound through bind_ops, backend resolution."""
import copy
import dataclasses
import math
import pickle
from pathlib import Path

import pytest
import torch

from lcirc_fast import _ext, config
from lcirc_fast.backend import CHOICES, ENV_VAR, resolve_backend
from lcirc_fast.modules import FeedForward, GatedCrossAttentionBlock, PerceiverCompressor, bind_ops
from lcirc_fast.ops import registry
from lcirc_fast.ops.registry import (
    RECORDS,
    BackendUnavailableError,
    OpSet,
    auto_backend,
    available_backends,
    bind,
    lookup,
    register,
    unregister,
)
from lcirc_fast.ops.utils.runtime import LAUNCHES

pytestmark = pytest.mark.interpreter


@pytest.fixture
def cuda_available(monkeypatch):
    """Pretend the CUDA extension is usable (its kernels are what the tests register)."""
    cuda = dataclasses.replace(RECORDS["cuda"], unavailable=lambda: None, load=lambda: None)
    monkeypatch.setitem(RECORDS, "cuda", cuda)


@pytest.fixture
def fake_cuda_gated_residual(cuda_available):
    calls = []

    def fake(x, branch, gate):
        calls.append(x.shape)
        return x + torch.tanh(gate.reshape(())) * branch

    register("gated_residual", "cuda", fake)
    yield calls
    unregister("gated_residual", "cuda")


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_one_record_per_backend_names_every_choice():
    assert config.BACKENDS == CHOICES == ("auto", *RECORDS)
    for name, rec in RECORDS.items():
        assert rec.name == name and set(rec.ops) <= set(registry.OPS) and rec.summary
        if rec.fallback is None:                     # a backend without fallback has every op
            assert set(rec.ops) == set(registry.OPS)
    assert registry.chain("cuda") == ["cuda", "triton"] and registry.chain("torch") == ["torch"]
    for name in ("torch", "triton"):                 # what a backend registers is what it declares
        RECORDS[name].load()
        assert {op for (op, b) in registry._IMPLS if b == name} == set(RECORDS[name].ops)


def test_register_refuses_an_op_the_record_does_not_declare():
    with pytest.raises(ValueError, match="declares no op 'layer_norm'.*BackendInfo"):
        register("layer_norm", "cuda", lambda *a: None)
    with pytest.raises(ValueError, match="backend must be one of"):
        register("layer_norm", "tpu", lambda *a: None)


def test_docs_describe_every_backend():
    env = (DOCS / "environment.md").read_text()
    api = (DOCS / "api.md").read_text()
    for name, rec in RECORDS.items():
        assert f"`{name}`" in env and rec.summary in env, name
        assert f"`{name}`" in api, name
    assert "LCIRC_BACKEND" in env and "--backend" in env


def test_available_and_auto_backends_on_this_machine():
    # tests run with TRITON_INTERPRET=1 and without the CUDA extension
    assert available_backends() == ("torch", "triton")
    assert available_backends("cpu") == ("torch", "triton")
    assert auto_backend("cpu") == "torch"              # triton is picked by "auto" on CUDA tensors only
    assert auto_backend("cuda") == "triton"


def test_bind_torch_and_triton():
    for backend in ("torch", "triton"):
        ops = bind(backend)
        assert ops.backend == backend
        assert dict(ops.provider) == {op: backend for op in registry.OPS}
    assert lookup("layer_norm", "triton")[1] == "triton"


def test_opset_is_immutable_and_shared_by_copies():
    ops = bind("torch")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ops.cross_attention = None
    with pytest.raises(TypeError):
        ops.provider["layer_norm"] = "triton"
    assert copy.deepcopy(ops) is ops and copy.copy(ops) is ops
    again = pickle.loads(pickle.dumps(ops))
    assert again.backend == "torch" and dict(again.provider) == dict(ops.provider)


def test_allow_tf32_is_bound_at_bind_time(monkeypatch):
    assert bind("triton", allow_tf32=False).cross_attention.keywords == {"allow_tf32": False}
    monkeypatch.setenv("TRITON_F32_DEFAULT", "ieee")
    ops = bind("triton")
    assert ops.allow_tf32 is False and ops.cross_attention.keywords == {"allow_tf32": False}
    monkeypatch.delenv("TRITON_F32_DEFAULT")
    assert bind("torch").allow_tf32 is True


def test_unknown_backend_and_op():
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        bind("auto")
    with pytest.raises(ValueError, match="backend must be one of"):
        bind("tpu")
    with pytest.raises(NotImplementedError, match="no implementation of op 'nope'"):
        lookup("nope", "torch")
    with pytest.raises(ValueError, match="already has a 'torch' implementation"):
        register("layer_norm", "torch", lambda *a: None)


def test_bind_triton_without_gpu_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        bind("triton")


def test_bind_cuda_without_extension_names_the_reason():
    reason = _ext.extension_unavailable_reason()
    assert reason  # a CPU machine: the extension is not usable
    with pytest.raises(BackendUnavailableError, match="CUDA extension") as exc:
        bind("cuda")
    assert reason in str(exc.value)
    with pytest.raises(RuntimeError):          # BackendUnavailableError is a RuntimeError
        bind("cuda")


def test_cuda_falls_back_to_triton_per_op(fake_cuda_gated_residual):
    ops = bind("cuda")
    assert ops.backend == "cuda"
    assert dict(ops.provider) == {"gated_residual": "cuda", "cross_attention": "triton", "layer_norm": "triton"}
    x, y = torch.randn(2, 8), torch.randn(2, 8)
    out = ops.gated_residual(x, y, torch.tensor([0.5]))
    assert fake_cuda_gated_residual == [x.shape]
    torch.testing.assert_close(out, x + math.tanh(0.5) * y)
    LAUNCHES.clear()
    ops.layer_norm(x, None, None)
    assert LAUNCHES["ln_fwd"] == 1                       # served by the Triton kernel
    unregister("gated_residual", "cuda")
    assert bind("cuda").provider["gated_residual"] == "triton"


# ---- the extension's registration, with CPU stand-ins for torch.ops.lcirc.cuda_* ---------------

@pytest.fixture
def cpu_extension_ops(cuda_available):
    """Define lcirc::cuda_gated_residual(_backward) with CPU kernels (the host reference math)
    and run the registration the extension's loader runs."""
    if hasattr(torch.ops.lcirc, "cuda_gated_residual"):
        pytest.skip("the real extension is loaded")
    from lcirc_fast.ops import cuda_ops

    lib = torch.library.Library("lcirc", "FRAGMENT")
    lib.define("cuda_gated_residual(Tensor x, Tensor o, Tensor gate) -> Tensor")
    lib.define("cuda_gated_residual_backward(Tensor grad_y, Tensor o, Tensor gate) -> (Tensor, Tensor)")

    def acc(t):                                      # fp32 math (fp64 inputs: fp64, for gradcheck)
        return t.to(torch.promote_types(t.dtype, torch.float32))

    def fwd(x, o, gate):
        return (acc(x) + torch.tanh(acc(gate)) * acc(o)).to(x.dtype)

    def bwd(dy, o, gate):
        t = torch.tanh(acc(gate))
        dg = (acc(dy) * acc(o)).sum() * (1 - t * t)
        return (t * acc(dy)).to(dy.dtype), dg.reshape(gate.shape).to(gate.dtype)

    lib.impl("cuda_gated_residual", fwd, "CPU")
    lib.impl("cuda_gated_residual_backward", bwd, "CPU")
    cuda_ops.register_extension_ops()
    yield
    unregister("gated_residual", "cuda")
    lib._destroy()


def test_extension_registration_and_autograd(cpu_extension_ops):
    ops = bind("cuda")
    assert dict(ops.provider) == {"gated_residual": "cuda", "cross_attention": "triton", "layer_norm": "triton"}
    x, y = (torch.randn(3, 7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    g = torch.tensor([0.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.gated_residual, (x, y, g))
    ref = bind("torch").gated_residual(x, y, g)
    torch.testing.assert_close(ops.gated_residual(x, y, g), ref)
    from lcirc_fast.ops.cuda_ops import cuda_gated_residual
    assert ops.gated_residual is cuda_gated_residual


# ---- modules --------------------------------------------------------------------------------

def test_bind_ops_sets_every_op_module():
    comp = PerceiverCompressor(dim=16, num_layers=2, heads=2, head_dim=8, ffn=32, max_segment_len=8)
    users = [m for m in comp.modules() if hasattr(m, "ops")]
    assert {type(m).__name__ for m in users} == {"PerceiverCompressor", "PerceiverAttention", "FeedForward"}
    assert all(m.ops.backend == "torch" for m in users)
    ops = bind("triton")
    bind_ops(comp, ops)
    assert all(m.ops is ops for m in users)
    with pytest.raises(TypeError, match="OpSet"):
        bind_ops(comp, "triton")
    assert isinstance(FeedForward(8, 16).ops, OpSet)


def test_modules_triton_equals_torch():
    torch.manual_seed(0)
    comp = PerceiverCompressor(dim=16, num_layers=2, heads=2, head_dim=8, ffn=32, max_segment_len=8)
    blk = GatedCrossAttentionBlock(dim=16, heads=2, head_dim=8, ffn=32)
    with torch.no_grad():
        blk.attn_gate.fill_(0.7)
        blk.ff_gate.fill_(-0.2)
    state, emb, x = torch.randn(2, 4, 16), torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    outs = {}
    for backend in ("torch", "triton"):
        bind_ops(comp, bind(backend))
        bind_ops(blk, bind(backend))
        z = comp(state, emb)
        k, v = blk.project_memory(z)
        outs[backend] = blk(x, k, v, kv_lengths=torch.tensor([4, 2]))
    torch.testing.assert_close(outs["triton"], outs["torch"], rtol=1e-4, atol=1e-5)


# ---- backend resolution -------------------------------------------------------------------------

def test_resolve_backend_cuda(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="backend='cuda'"):
        resolve_backend("cuda", "cpu")
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_backend("auto", "cpu")
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(BackendUnavailableError, match="CUDA extension"):
        resolve_backend("cuda", "cuda")
    assert resolve_backend("triton", "cpu") == "triton"     # interpreter
