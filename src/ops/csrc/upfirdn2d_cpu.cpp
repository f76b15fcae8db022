// upfirdn2d on CPU (SPEC 3.2), written from the math, float32 / float64.
//
// Per axis, with input x[0..n), upsampling u, pads (p0, p1), kernel k[0..K) and downsampling d, the output is
//   out[o] = sum_i x[i] * k[m - u*i + K - 1 - p0],   m = o*d,   only terms with 0 <= kernel index < K,
// i.e. zero insertion, padding, true convolution and decimation without ever building the intermediates.
// The 2-D op applies this on both axes with the 2-D kernel k[ky][kx].
//
// Loop order (why): for each output row we visit the few input rows that reach it (ceil(K/u) of them), and for
// each kernel column tap we sweep the whole output row at once; the index ranges of rows and taps depend only on
// the configuration and are tabulated once per call. With u == 1 or d == 1 on x, that sweep is a
// strided axpy (`out[ox*step] += w * in[...]`), which the compiler vectorises; the general case tests every
// output column. Planes (n, c) are independent and split across threads with at::parallel_for.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

// x86-64 + GCC: compile the hot loops twice, for AVX2/FMA and for the baseline, and pick at load time (ifunc).
// The extension is cached on disk and may be reused by another machine sharing the home directory, so
// -march=native would be unsafe; function multi-versioning is not.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PDFGC_SIMD_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define PDFGC_SIMD_CLONES
#endif

namespace {

inline int64_t floordiv(int64_t a, int64_t b) {  // b > 0; rounds toward -inf
  int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
inline int64_t ceildiv(int64_t a, int64_t b) { return -floordiv(-a, b); }
inline int64_t posmod(int64_t a, int64_t b) { return ((a % b) + b) % b; }

// Index bookkeeping that depends only on the configuration, computed once per call (not per plane and row:
// the integer divisions it needs would otherwise dominate small planes).
struct RowSpan {  // input rows iy_lo..iy_hi reach output row oy; my = oy * dy
  int64_t iy_lo, iy_hi, my;
};
// for kernel column kx: output columns ox = ox_lo + j*step (<= ox_hi) read input column ix0 + j*istep
struct ColTap {
  int64_t ox_lo, ox_hi, step, ix0, istep;
};

std::vector<RowSpan> row_spans(int64_t H, int64_t KH, int64_t OH, int64_t uy, int64_t dy, int64_t py0) {
  std::vector<RowSpan> rows(OH);
  for (int64_t oy = 0; oy < OH; ++oy) {
    const int64_t my = oy * dy;
    rows[oy] = {std::max<int64_t>(0, ceildiv(my - py0, uy)), std::min<int64_t>(H - 1, floordiv(my + KH - 1 - py0, uy)),
                my};
  }
  return rows;
}

// Column taps for the two fast cases (ux == 1, or dx == 1); the general case is handled per column.
std::vector<ColTap> col_taps(int64_t W, int64_t KW, int64_t OW, int64_t ux, int64_t dx, int64_t px0) {
  std::vector<ColTap> taps(KW);
  for (int64_t kx = 0; kx < KW; ++kx) {
    const int64_t c = KW - 1 - px0 - kx;  // ux * ix == ox * dx + c
    if (ux == 1) {
      const int64_t lo = std::max<int64_t>(0, ceildiv(-c, dx));
      const int64_t hi = std::min<int64_t>(OW - 1, floordiv(W - 1 - c, dx));
      taps[kx] = {lo, hi, 1, lo * dx + c, dx};
    } else {  // dx == 1: ox == -c (mod ux), ix = (ox + c) / ux
      int64_t lo = std::max<int64_t>(0, -c);
      lo += posmod(-c - lo, ux);
      const int64_t hi = std::min<int64_t>(OW - 1, (W - 1) * ux - c);
      taps[kx] = {lo, hi, ux, (lo + c) / ux, 1};
    }
  }
  return taps;
}

template <typename scalar_t>
PDFGC_SIMD_CLONES
void upfirdn2d_plane(const scalar_t* __restrict__ in, const scalar_t* __restrict__ k, scalar_t* __restrict__ out,
                     const RowSpan* rows, const ColTap* taps, int64_t W, int64_t KH, int64_t KW, int64_t OH,
                     int64_t OW, int64_t ux, int64_t uy, int64_t dx, int64_t px0, int64_t py0) {
  const bool fast = (ux == 1 || dx == 1);
  for (int64_t oy = 0; oy < OH; ++oy) {
    scalar_t* __restrict__ orow = out + oy * OW;
    std::fill(orow, orow + OW, scalar_t(0));  // zero while the row is in cache (no separate memset pass)
    const RowSpan r = rows[oy];
    for (int64_t iy = r.iy_lo; iy <= r.iy_hi; ++iy) {
      const scalar_t* __restrict__ irow = in + iy * W;
      const scalar_t* __restrict__ krow = k + (r.my - uy * iy + KH - 1 - py0) * KW;
      for (int64_t kx = 0; kx < KW; ++kx) {
        const scalar_t w = krow[kx];
        if (fast) {
          const ColTap t = taps[kx];
          if (t.step == 1 && t.istep == 1) {  // Blur and friends: a contiguous axpy, vectorised
            const scalar_t* __restrict__ src = irow + t.ix0 - t.ox_lo;
            for (int64_t ox = t.ox_lo; ox <= t.ox_hi; ++ox) orow[ox] += w * src[ox];
          } else {
            int64_t ix = t.ix0;
            for (int64_t ox = t.ox_lo; ox <= t.ox_hi; ox += t.step, ix += t.istep) orow[ox] += w * irow[ix];
          }
        } else {
          const int64_t c = KW - 1 - px0 - kx;
          for (int64_t ox = 0; ox < OW; ++ox) {
            const int64_t t = ox * dx + c;
            if (t < 0 || t % ux != 0) continue;
            const int64_t ix = t / ux;
            if (ix >= W) break;
            orow[ox] += w * irow[ix];
          }
        }
      }
    }
  }
}

at::Tensor upfirdn2d_cpu(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t ux, int64_t uy, int64_t dx,
                         int64_t dy, int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
  TORCH_CHECK(x_in.device().is_cpu(), "pdfgc upfirdn2d (cpu): x must be a CPU tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() == 4, "pdfgc upfirdn2d (cpu): x must be (N, C, H, W), got ", x_in.sizes());
  TORCH_CHECK(kernel_in.dim() == 2, "pdfgc upfirdn2d (cpu): kernel must be (kh, kw), got ", kernel_in.sizes());
  TORCH_CHECK(ux >= 1 && uy >= 1 && dx >= 1 && dy >= 1, "pdfgc upfirdn2d (cpu): up/down must be >= 1");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor k = kernel_in.to(x.scalar_type()).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t KH = k.size(0), KW = k.size(1);
  const int64_t OH = (H * uy + py0 + py1 - KH) / dy + 1;
  const int64_t OW = (W * ux + px0 + px1 - KW) / dx + 1;
  TORCH_CHECK(H * uy + py0 + py1 - KH >= 0 && W * ux + px0 + px1 - KW >= 0,
              "pdfgc upfirdn2d (cpu): empty output for input ", x.sizes(), " and kernel ", k.sizes());
  at::Tensor out = at::empty({N, C, OH, OW}, x.options());
  const std::vector<RowSpan> rows = row_spans(H, KH, OH, uy, dy, py0);
  const std::vector<ColTap> taps = (ux == 1 || dx == 1) ? col_taps(W, KW, OW, ux, dx, px0) : std::vector<ColTap>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pdfgc_upfirdn2d_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // grain: about 16k output samples per task so that small planes are batched together
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, OH * OW));
    at::parallel_for(0, N * C, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p)
        upfirdn2d_plane<scalar_t>(xp + p * H * W, kp, op + p * OH * OW, rows.data(), taps.data(), W, KH, KW, OH,
                                  OW, ux, uy, dx, px0, py0);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(pdfgc_upfirdn2d, m) {
  m.def("upfirdn2d(Tensor x, Tensor kernel, int ux, int uy, int dx, int dy, int px0, int px1, int py0, int py1)"
        " -> Tensor",
        &upfirdn2d_cpu);
}
