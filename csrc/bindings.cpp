// Torch binding of the lcirc CUDA kernels (csrc/kernels/*.cu, C API in lcirc_kernels.h).
//
// Importing the module `lcirc_fast._C` registers, for CUDA tensors:
//   torch.ops.lcirc.cuda_gated_residual(x, o, gate) -> y = x + tanh(gate) * o
//       x, o [..., C] fp32/fp16/bf16; gate: 1 element or C elements (any float dtype)
//   torch.ops.lcirc.cuda_gated_residual_backward(grad_y, o, gate) -> (grad_o, grad_gate)
//       grad_x is grad_y itself; grad_gate has gate's shape and dtype (deterministic).
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "lcirc_kernels.h"

namespace {

lcirc_dtype_t to_lcirc_dtype(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return LCIRC_FLOAT32;
    case at::kHalf: return LCIRC_FLOAT16;
    case at::kBFloat16: return LCIRC_BFLOAT16;
    default: TORCH_CHECK(false, op, ": dtype must be float32, float16 or bfloat16, got ", t);
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
}

// Shared argument checks of the gated-residual ops; returns the fp32 contiguous gate.
at::Tensor check_gated(const at::Tensor& a, const at::Tensor& o, const at::Tensor& gate,
                       const char* op) {
  TORCH_CHECK(a.is_cuda() && o.is_cuda() && gate.is_cuda(), op, ": inputs must be CUDA tensors");
  TORCH_CHECK(a.device() == o.device() && a.device() == gate.device(), op,
              ": inputs on different devices");
  TORCH_CHECK(a.dim() >= 1, op, ": activations must have at least 1 dim");
  TORCH_CHECK(a.sizes() == o.sizes(), op, ": shape mismatch ", a.sizes(), " vs ", o.sizes());
  TORCH_CHECK(a.scalar_type() == o.scalar_type(), op, ": dtype mismatch ", a.scalar_type(),
              " vs ", o.scalar_type());
  to_lcirc_dtype(a.scalar_type(), op);
  TORCH_CHECK(at::isFloatingType(gate.scalar_type()), op, ": gate must be floating point");
  const int64_t cols = a.size(-1);
  TORCH_CHECK(gate.numel() == 1 || gate.numel() == cols, op, ": gate must have 1 or ", cols,
              " elements (last dim), got ", gate.numel());
  return gate.to(at::kFloat).contiguous().view({gate.numel()});
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& o, const at::Tensor& gate) {
  const char* op = "lcirc.cuda_gated_residual";
  const at::Tensor g = check_gated(x, o, gate, op);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor oc = o.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t cols = xc.size(-1);
  if (xc.numel() == 0) return y;
  check_launch(lcirc_gated_residual_fwd(xc.data_ptr(), oc.data_ptr(), g.data_ptr<float>(),
                                        y.data_ptr(), xc.numel() / cols, cols, g.numel(),
                                        to_lcirc_dtype(xc.scalar_type(), op),
                                        c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return y;
}

std::tuple<at::Tensor, at::Tensor> gated_residual_backward(const at::Tensor& grad_y,
                                                           const at::Tensor& o,
                                                           const at::Tensor& gate) {
  const char* op = "lcirc.cuda_gated_residual_backward";
  const at::Tensor g = check_gated(grad_y, o, gate, op);
  c10::cuda::CUDAGuard guard(grad_y.device());
  const at::Tensor dy = grad_y.contiguous();
  const at::Tensor oc = o.contiguous();
  at::Tensor d_o = at::empty_like(dy);
  const int64_t cols = dy.size(-1);
  if (dy.numel() == 0) return {d_o, at::zeros_like(gate)};
  const int64_t rows = dy.numel() / cols;
  at::Tensor d_gate = at::empty({g.numel()}, g.options());
  at::Tensor ws = at::empty({lcirc_gated_residual_bwd_workspace_numel(rows, cols)}, g.options());
  check_launch(lcirc_gated_residual_bwd(dy.data_ptr(), oc.data_ptr(), g.data_ptr<float>(),
                                        d_o.data_ptr(), d_gate.data_ptr<float>(),
                                        ws.data_ptr<float>(), rows, cols, g.numel(),
                                        to_lcirc_dtype(dy.scalar_type(), op),
                                        c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return {d_o, d_gate.view(gate.sizes()).to(gate.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lcirc, m) {
  m.def("cuda_gated_residual(Tensor x, Tensor o, Tensor gate) -> Tensor");
  m.def("cuda_gated_residual_backward(Tensor grad_y, Tensor o, Tensor gate) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lcirc, CUDA, m) {
  m.impl("cuda_gated_residual", &gated_residual);
  m.impl("cuda_gated_residual_backward", &gated_residual_backward);
}

// A minimal Python module: importing lcirc_fast._C loads this library, whose static
// initialisers above register the ops with torch's dispatcher.
static struct PyModuleDef lcirc_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "lcirc_fast CUDA kernels, registered as torch.ops.lcirc.cuda_*",
    -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&lcirc_c_module); }
