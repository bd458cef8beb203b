"""torch.library.opcheck of the Triton custom ops (schema, fake implementation, autograd
registration, AOT dispatch) on tiny fp32 shapes under the interpreter."""
import math

import pytest
import torch
from torch.library import opcheck

from lcirc_fast.ops.cross_attn import xattn_bwd, xattn_fwd
from lcirc_fast.ops.layernorm import layer_norm_bwd, layer_norm_fwd
from lcirc_fast.ops.tanh_gate import gated_residual_bwd, gated_residual_fwd

pytestmark = pytest.mark.interpreter


def _leaf(*shape):
    return torch.randn(*shape).requires_grad_(True)


def _xattn_args(varlen: bool):
    H, D, scale = 2, 8, 1 / math.sqrt(8)
    if varlen:                                      # packed keys, dense queries
        q, k, v = _leaf(3, 5, H, D), _leaf(9, H, D), _leaf(9, H, D)
        cu_k = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
        return (q, k, v, None, None, cu_k, 5, 5, scale)
    q, k, v = _leaf(2, 5, H, D), _leaf(2, 7, H, D), _leaf(2, 7, H, D)
    return (q, k, v, torch.tensor([7, 3]), None, None, 5, 7, scale)


@pytest.mark.parametrize("varlen", [False, True], ids=["kv_lengths", "varlen"])
@pytest.mark.parametrize("num_splits", [0, 2])
def test_opcheck_xattn_fwd(varlen, num_splits):
    args = _xattn_args(varlen)
    opcheck(xattn_fwd, args + (False, True, num_splits, False))
    # no-grad form: no LSE stored
    opcheck(xattn_fwd, tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            + (False, False, num_splits, False), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("need_dq,need_dkdv", [(True, True), (True, False), (False, True)])
def test_opcheck_xattn_bwd(need_dq, need_dkdv):
    q, k, v, klen, cu_q, cu_k, mq, mk, scale = (a.detach() if isinstance(a, torch.Tensor) else a
                                                for a in _xattn_args(False))
    o, lse = xattn_fwd(q, k, v, klen, cu_q, cu_k, mq, mk, scale, False, True, 0, False)
    do = torch.randn_like(o)
    opcheck(xattn_bwd, (do, q, k, v, o, lse, klen, cu_q, cu_k, mq, mk, scale, need_dq, need_dkdv, True, False))


@pytest.mark.parametrize("gate_shape", [(), (1,)])
def test_opcheck_gated_residual(gate_shape):
    x, y = _leaf(3, 40), _leaf(3, 40)
    g = torch.full(gate_shape, 0.4).requires_grad_(True)
    opcheck(gated_residual_fwd, (x, y, g))
    dout = torch.randn(3, 40)
    for need in ((True, True), (True, False), (False, True)):
        opcheck(gated_residual_bwd, (dout, y.detach(), g.detach(), *need))


@pytest.mark.parametrize("with_add", [False, True])
def test_opcheck_layer_norm(with_add):
    x2, w, b = _leaf(6, 24), _leaf(24), _leaf(24)
    add2 = _leaf(3, 24) if with_add else None       # period 3: rows r use add2[r % 3]
    opcheck(layer_norm_fwd, (x2, add2, w, b, 1e-5, torch.float32, True))
    opcheck(layer_norm_fwd, (x2.detach(), None, None, None, 1e-5, torch.float32, False),
            test_utils=("test_schema", "test_faketensor"))
    _, mean, rstd = layer_norm_fwd(x2.detach(), add2.detach() if with_add else None, w.detach(), b.detach(),
                                   1e-5, torch.float32, True)
    dy = torch.randn(6, 24)
    a = add2.detach() if with_add else None
    for need in ((True, with_add, True), (False, False, True), (True, False, False)):
        opcheck(layer_norm_bwd, (dy, x2.detach(), a, w.detach(), mean, rstd, *need))
