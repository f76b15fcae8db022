// Inference-only fused element-wise kernels on CPU for the FAN motion encoder (SPEC 2.2), float32 / float64,
// written from the math. Forward only: the Python dispatch uses the PyTorch reference whenever autograd needs a
// graph.
//
// scale_shift_relu: y = max(x * scale[c] + shift[c], 0)   (an eval-mode BatchNorm followed by ReLU: one pass
//                   over memory instead of two)
// cat_add:          y = cat(parts, dim=1) + residual     (the FAN ConvBlock's output: one pass instead of two,
//                   and no concatenated temporary)
// Layouts: 4-D channels_last (channel = i % C: rows of C channels) and contiguous N C ... (planes of H*W that
// share one channel) are read in place; anything else is made contiguous first. Outputs keep the layout.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

// x86-64 + GCC: compile the hot loops for AVX2/FMA and for the baseline, picked at load time (ifunc); the reason
// -march=native is not used is in fused_act_cpu.cpp (the macro is repeated there on purpose: torch's JIT build
// hash covers the listed sources, not included headers).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PDFGC_SIMD_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define PDFGC_SIMD_CLONES
#endif

namespace {

constexpr int64_t kGrain = 32768;  // elements per task: amortise thread start-up on small tensors

bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// The loops take raw pointers by value in free functions so that the compiler sees no aliasing through lambda
// captures and vectorises them (see fused_act_cpu.cpp).

// rows [r0, r1) of C channels each (channels_last)
template <typename scalar_t>
PDFGC_SIMD_CLONES
void ssr_rows(const scalar_t* __restrict__ x, const scalar_t* __restrict__ s, const scalar_t* __restrict__ b,
              scalar_t* __restrict__ y, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* __restrict__ xr = x + r * C;
    scalar_t* __restrict__ yr = y + r * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = std::max(xr[c] * s[c] + b[c], scalar_t(0));
  }
}

// planes [p0, p1) of `inner` elements, plane p has channel p % C (contiguous N C ...)
template <typename scalar_t>
PDFGC_SIMD_CLONES
void ssr_planes(const scalar_t* __restrict__ x, const scalar_t* __restrict__ s, const scalar_t* __restrict__ b,
                scalar_t* __restrict__ y, int64_t p0, int64_t p1, int64_t inner, int64_t C) {
  for (int64_t p = p0; p < p1; ++p) {
    const scalar_t sc = s[p % C], sh = b[p % C];
    const scalar_t* __restrict__ xp = x + p * inner;
    scalar_t* __restrict__ yp = y + p * inner;
    for (int64_t i = 0; i < inner; ++i) yp[i] = std::max(xp[i] * sc + sh, scalar_t(0));
  }
}

at::Tensor scale_shift_relu(const at::Tensor& x_in, const at::Tensor& scale_in, const at::Tensor& shift_in) {
  TORCH_CHECK(x_in.device().is_cpu(), "pdfgc scale_shift_relu (cpu): x must be a CPU tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 2, "pdfgc scale_shift_relu (cpu): x needs a channel axis 1, got ", x_in.sizes());
  const int64_t C = x_in.size(1);
  TORCH_CHECK(scale_in.numel() == C && shift_in.numel() == C, "pdfgc scale_shift_relu (cpu): scale and shift need ",
              C, " elements (one per channel), got ", scale_in.numel(), " and ", shift_in.numel());
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  const at::Tensor scale = scale_in.to(x.scalar_type()).contiguous().reshape({C});
  const at::Tensor shift = shift_in.to(x.scalar_type()).contiguous().reshape({C});
  at::Tensor y = at::empty_like(x);
  const int64_t numel = x.numel();
  if (numel == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pdfgc_scale_shift_relu_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* sp = scale.data_ptr<scalar_t>();
    const scalar_t* bp = shift.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const int64_t inner = numel / (x.size(0) * C);
    if (cl || inner == 1) {
      at::parallel_for(0, numel / C, std::max<int64_t>(1, kGrain / C), [&](int64_t b, int64_t e) {
        ssr_rows<scalar_t>(xp, sp, bp, yp, b, e, C);
      });
    } else {
      at::parallel_for(0, numel / inner, std::max<int64_t>(1, kGrain / inner), [&](int64_t b, int64_t e) {
        ssr_planes<scalar_t>(xp, sp, bp, yp, b, e, inner, C);
      });
    }
  });
  return y;
}

// y[row, off:off+n] = p[row, 0:n] + res[row, off:off+n] for rows [r0, r1): p has n channels per row, res and y C
template <typename scalar_t>
PDFGC_SIMD_CLONES
void add_rows(const scalar_t* __restrict__ p, const scalar_t* __restrict__ res, scalar_t* __restrict__ y, int64_t r0,
              int64_t r1, int64_t n, int64_t off, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* __restrict__ pr = p + r * n;
    const scalar_t* __restrict__ rr = res + r * C + off;
    scalar_t* __restrict__ yr = y + r * C + off;
    for (int64_t c = 0; c < n; ++c) yr[c] = pr[c] + rr[c];
  }
}

template <typename scalar_t>
PDFGC_SIMD_CLONES
void add_flat(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, scalar_t* __restrict__ y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

at::Tensor cat_add(at::TensorList parts_in, const at::Tensor& res_in) {
  TORCH_CHECK(res_in.device().is_cpu(), "pdfgc cat_add (cpu): residual must be a CPU tensor, got ", res_in.device());
  TORCH_CHECK(!parts_in.empty(), "pdfgc cat_add (cpu): needs at least one part");
  TORCH_CHECK(res_in.dim() >= 2, "pdfgc cat_add (cpu): residual needs a channel axis 1, got ", res_in.sizes());
  const bool cl = is_channels_last(res_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor res = res_in.contiguous(fmt);
  const int64_t N = res.size(0), C = res.size(1);
  std::vector<at::Tensor> parts;
  int64_t total = 0;
  for (const auto& p : parts_in) {
    TORCH_CHECK(p.device().is_cpu() && p.scalar_type() == res.scalar_type(),
                "pdfgc cat_add (cpu): parts must be CPU tensors of the residual's dtype ", res.scalar_type(), ", got ",
                p.scalar_type(), " on ", p.device());
    TORCH_CHECK(p.dim() == res.dim() && p.size(0) == N, "pdfgc cat_add (cpu): part of shape ", p.sizes(),
                " does not match the residual ", res.sizes(), " outside axis 1");
    for (int64_t d = 2; d < res.dim(); ++d)
      TORCH_CHECK(p.size(d) == res.size(d), "pdfgc cat_add (cpu): part of shape ", p.sizes(),
                  " does not match the residual ", res.sizes(), " outside axis 1");
    total += p.size(1);
    parts.push_back(p.contiguous(fmt));
  }
  TORCH_CHECK(total == C, "pdfgc cat_add (cpu): the parts have ", total, " channels in all, the residual ", C);
  at::Tensor y = at::empty_like(res);
  const int64_t numel = res.numel();
  if (numel == 0) return y;
  const int64_t inner = numel / (N * C);
  AT_DISPATCH_FLOATING_TYPES(res.scalar_type(), "pdfgc_cat_add_cpu", [&] {
    const scalar_t* rp = res.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    std::vector<const scalar_t*> pp;
    std::vector<int64_t> pc;
    for (const auto& p : parts) {
      pp.push_back(p.data_ptr<scalar_t>());
      pc.push_back(p.size(1));
    }
    if (cl || inner == 1) {
      // rows of C channels: each part fills its slice of every row
      at::parallel_for(0, numel / C, std::max<int64_t>(1, kGrain / C), [&](int64_t b, int64_t e) {
        int64_t off = 0;
        for (size_t k = 0; k < pp.size(); ++k) {
          add_rows<scalar_t>(pp[k], rp, yp, b, e, pc[k], off, C);
          off += pc[k];
        }
      });
    } else {
      // contiguous N C ...: output plane (n, c) is part k's plane (n, c - off_k) plus the residual's plane
      std::vector<int64_t> part_of(C), chan_in(C);
      for (int64_t k = 0, c = 0; k < static_cast<int64_t>(pc.size()); ++k)
        for (int64_t j = 0; j < pc[k]; ++j, ++c) part_of[c] = k, chan_in[c] = j;
      at::parallel_for(0, N * C, std::max<int64_t>(1, kGrain / inner), [&](int64_t b, int64_t e) {
        for (int64_t q = b; q < e; ++q) {
          const int64_t n = q / C, c = q % C, k = part_of[c];
          const scalar_t* src = pp[k] + (n * pc[k] + chan_in[c]) * inner;
          add_flat<scalar_t>(src, rp + q * inner, yp + q * inner, inner);
        }
      });
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(pdfgc_inference, m) {
  m.def("scale_shift_relu(Tensor x, Tensor scale, Tensor shift) -> Tensor", &scale_shift_relu);
  m.def("cat_add(Tensor[] parts, Tensor residual) -> Tensor", &cat_add);
}
