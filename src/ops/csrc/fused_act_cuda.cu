// Fused bias + leaky ReLU + gain on CUDA (SPEC 3.1); float32/float64/float16/bfloat16, written from the math.
//
// forward:  z = x + bias[c];  y = scale * (z >= 0 ? z : slope * z);  mask = (z >= 0)
// backward: dL/dz = g * (mask ? scale : scale * slope); the gradient of that masked scale w.r.t. g is the same
//           masked scale, so one kernel serves every order of derivative.
// Layouts: contiguous NC... (channel = (i / inner) % C) and 4-D channels_last (channel = i % C) in place.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(65535) * 8));
}

template <typename scalar_t>
__global__ void act_fwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bias,
                               scalar_t* __restrict__ y, bool* __restrict__ mask, int64_t n, int64_t C,
                               int64_t inner, bool channels_innermost, at::opmath_type<scalar_t> pos,
                               at::opmath_type<scalar_t> neg) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    acc_t z = static_cast<acc_t>(x[i]);
    if (bias != nullptr) {
      const int64_t c = channels_innermost ? i % C : (i / inner) % C;
      z += static_cast<acc_t>(bias[c]);
    }
    const bool m = z >= acc_t(0);
    mask[i] = m;
    y[i] = static_cast<scalar_t>(z * (m ? pos : neg));
  }
}

template <typename scalar_t>
__global__ void act_grad_kernel(const scalar_t* __restrict__ g, const bool* __restrict__ mask,
                                scalar_t* __restrict__ out, int64_t n, at::opmath_type<scalar_t> pos,
                                at::opmath_type<scalar_t> neg) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(g[i]) * (mask[i] ? pos : neg));
}

std::tuple<at::Tensor, at::Tensor> fused_lrelu_fwd_cuda(const at::Tensor& x_in,
                                                       const std::optional<at::Tensor>& bias_in, double slope,
                                                       double scale) {
  TORCH_CHECK(x_in.is_cuda(), "pdfgc fused_leaky_relu (cuda): x must be a CUDA tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 2 || !bias_in.has_value(),
              "pdfgc fused_leaky_relu (cuda): a bias needs x with a channel axis 1, got ", x_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool cl = x_in.dim() == 4 && !x_in.is_contiguous() &&
                  x_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor mask = at::empty_like(x, x.options().dtype(at::kBool));
  const int64_t n = x.numel();
  if (n == 0) return {y, mask};
  const int64_t C = x.dim() >= 2 ? x.size(1) : 1;
  const int64_t inner = x.dim() >= 2 ? n / (x.size(0) * C) : 1;
  at::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->to(x.device(), x.scalar_type()).contiguous();
    TORCH_CHECK(bias.numel() == C, "pdfgc fused_leaky_relu (cuda): bias has ", bias.numel(),
                " elements, expected C = ", C);
  }
  // the light c10 headers: ATen/cuda/CUDAContext.h would pull cuSPARSE/cuBLAS headers a minimal toolkit lacks
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pdfgc_fused_lrelu_fwd_cuda", [&] {
    act_fwd_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
        mask.data_ptr<bool>(), n, C, inner, cl || inner == 1, static_cast<at::opmath_type<scalar_t>>(scale),
        static_cast<at::opmath_type<scalar_t>>(scale * slope));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, mask};
}

at::Tensor fused_lrelu_grad_cuda(const at::Tensor& g_in, const at::Tensor& mask, double slope, double scale) {
  TORCH_CHECK(g_in.is_cuda() && mask.is_cuda(), "pdfgc fused_leaky_relu (cuda): CUDA tensors only");
  TORCH_CHECK(g_in.sizes() == mask.sizes(), "pdfgc fused_leaky_relu (cuda): gradient ", g_in.sizes(),
              " and mask ", mask.sizes(), " differ in shape");
  TORCH_CHECK(mask.scalar_type() == at::kBool, "pdfgc fused_leaky_relu (cuda): mask must be bool");
  const c10::cuda::CUDAGuard guard(g_in.device());
  const auto fmt = mask.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(mask.is_contiguous(fmt), "pdfgc fused_leaky_relu (cuda): mask must be dense");
  const at::Tensor g = g_in.contiguous(fmt);
  at::Tensor out = at::empty_like(g);
  const int64_t n = g.numel();
  if (n == 0) return out;
  // the light c10 headers: ATen/cuda/CUDAContext.h would pull cuSPARSE/cuBLAS headers a minimal toolkit lacks
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "pdfgc_fused_lrelu_grad_cuda", [&] {
    act_grad_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), mask.data_ptr<bool>(), out.data_ptr<scalar_t>(), n,
        static_cast<at::opmath_type<scalar_t>>(scale), static_cast<at::opmath_type<scalar_t>>(scale * slope));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY(pdfgc_fused_act_cuda, m) {
  m.def("fused_lrelu_fwd(Tensor x, Tensor? bias, float slope, float scale) -> (Tensor, Tensor)",
        &fused_lrelu_fwd_cuda);
  m.def("fused_lrelu_grad(Tensor g, Tensor mask, float slope, float scale) -> Tensor", &fused_lrelu_grad_cuda);
}
