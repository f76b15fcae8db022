// upfirdn2d on CUDA (SPEC 3.2), written from the math; float32/float64/float16/bfloat16 (fp32 accumulation).
//
// Per axis: out[o] = sum_i x[i] * k[m - u*i + K - 1 - p0] with m = o*d and 0 <= kernel index < K, i.e. zero
// insertion, padding, true convolution and decimation without building any intermediate. One thread computes
// one output sample: it visits only the input rows i in [ceil((m - p0)/u), floor((m + K - 1 - p0)/u)] and the
// matching columns (ceil(K/u) of each), so upsampling costs no multiply-by-zero.
// The gradient w.r.t. x is this same kernel with the flipped filter and swapped up/down (see _params.py), so
// first and higher-order derivatives need nothing else.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace {

__device__ __forceinline__ int64_t floordiv_d(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
__device__ __forceinline__ int64_t ceildiv_d(int64_t a, int64_t b) { return -floordiv_d(-a, b); }

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ k,
                                 scalar_t* __restrict__ out, int64_t planes, int64_t H, int64_t W, int64_t KH,
                                 int64_t KW, int64_t OH, int64_t OW, int64_t ux, int64_t uy, int64_t dx, int64_t dy,
                                 int64_t px0, int64_t py0) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = planes * OH * OW;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t ox = idx % OW;
    const int64_t oy = (idx / OW) % OH;
    const int64_t p = idx / (OW * OH);
    const int64_t my = oy * dy, mx = ox * dx;
    const int64_t iy_lo = max(int64_t(0), ceildiv_d(my - py0, uy));
    const int64_t iy_hi = min(H - 1, floordiv_d(my + KH - 1 - py0, uy));
    const int64_t ix_lo = max(int64_t(0), ceildiv_d(mx - px0, ux));
    const int64_t ix_hi = min(W - 1, floordiv_d(mx + KW - 1 - px0, ux));
    const scalar_t* plane = x + p * H * W;
    acc_t acc = 0;
    for (int64_t iy = iy_lo; iy <= iy_hi; ++iy) {
      const scalar_t* krow = k + (my - uy * iy + KH - 1 - py0) * KW;
      const scalar_t* irow = plane + iy * W;
      for (int64_t ix = ix_lo; ix <= ix_hi; ++ix)
        acc += static_cast<acc_t>(irow[ix]) * static_cast<acc_t>(krow[mx - ux * ix + KW - 1 - px0]);
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

at::Tensor upfirdn2d_cuda(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t ux, int64_t uy, int64_t dx,
                          int64_t dy, int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
  TORCH_CHECK(x_in.is_cuda(), "pdfgc upfirdn2d (cuda): x must be a CUDA tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() == 4, "pdfgc upfirdn2d (cuda): x must be (N, C, H, W), got ", x_in.sizes());
  TORCH_CHECK(kernel_in.dim() == 2, "pdfgc upfirdn2d (cuda): kernel must be (kh, kw), got ", kernel_in.sizes());
  TORCH_CHECK(ux >= 1 && uy >= 1 && dx >= 1 && dy >= 1, "pdfgc upfirdn2d (cuda): up/down must be >= 1");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor k = kernel_in.to(x.device(), x.scalar_type()).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t KH = k.size(0), KW = k.size(1);
  TORCH_CHECK(H * uy + py0 + py1 - KH >= 0 && W * ux + px0 + px1 - KW >= 0,
              "pdfgc upfirdn2d (cuda): empty output for input ", x.sizes(), " and kernel ", k.sizes());
  const int64_t OH = (H * uy + py0 + py1 - KH) / dy + 1;
  const int64_t OW = (W * ux + px0 + px1 - KW) / dx + 1;
  at::Tensor out = at::empty({N, C, OH, OW}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, int64_t(65535) * 8);
  // the light c10 headers: ATen/cuda/CUDAContext.h would pull cuSPARSE/cuBLAS headers a minimal toolkit lacks
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pdfgc_upfirdn2d_cuda", [&] {
    upfirdn2d_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N * C, H, W, KH, KW, OH, OW, ux,
        uy, dx, dy, px0, py0);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY(pdfgc_upfirdn2d_cuda, m) {
  m.def("upfirdn2d(Tensor x, Tensor kernel, int ux, int uy, int dx, int dy, int px0, int px1, int py0, int py1)"
        " -> Tensor",
        &upfirdn2d_cuda);
}
