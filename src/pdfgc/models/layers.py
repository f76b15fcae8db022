"""StyleGAN2 building blocks of the PD-FGC generator (SPEC 2.5, 3).

Parameter and buffer names follow the reference state_dict layout exactly (`conv.weight`, `conv.modulation.*`,
`conv.blur.kernel`, `noise.weight`, `activate.bias`, `upsample.kernel`, ...), so the released
`generator_model.pth` loads without renaming. The fused ops come from `pdfgc_ops` (C++/CUDA kernels when built,
a PyTorch reference otherwise).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pdfgc_ops import FusedLeakyReLU, fused_leaky_relu, upfirdn2d

DEFAULT_BLUR_KERNEL = (1, 3, 3, 1)
NOISE_MODES = ("cached", "const", "none", "random")


def _inplace_ok(t: torch.Tensor) -> bool:
    """True when `t` may be modified in place without breaking autograd (no graph is being recorded for it)."""
    return not (torch.is_grad_enabled() and t.requires_grad)


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """Separable FIR taps -> normalised 2-D kernel: outer(k, k) / sum, float32 (len(k), len(k))."""
    k = torch.as_tensor(list(k), dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2 over dim 1) + 1e-8); first layer of the (unused) mapping MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    """FIR low-pass `upfirdn2d(x, kernel, pad=pad)`; kernel scaled by factor^2 after a zero-insertion upsample."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * (upsample_factor**2)  # keep the DC gain of the zero-inserted signal
        self.register_buffer("kernel", k)
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling (zero insertion + blur), (B,C,H,W) -> (B,C,2H,2W); used on the ToRGB skip path."""

    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * (factor**2)
        self.register_buffer("kernel", k)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: y = x (W lr_mul / sqrt(in))^T + b lr_mul.

    With `activation="fused_lrelu"` the bias goes through the fused leaky ReLU (sqrt(2) gain) instead.
    Shapes: weight (out_dim, in_dim), bias (out_dim,).
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: Optional[str] = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # scale the (B, out) product, not the (out, in) weight: the same value, without re-scaling e.g. the
        # 512 x 2590 modulation weights on every call
        out = F.linear(x, self.weight) * self.scale
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(out, bias)
        return out + bias if bias is not None else out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}"


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution, optionally with a 2x transposed-conv upsample followed by a blur.

    forward(x (B,in,H,W), w (B,style_dim)) -> (out (B,out,H',W'), s (B,in)) with H' = H, or 2H when upsampling.

    Math (SPEC 2.5): s = modulation(w); W'_b = scale * W * s_b (per input channel); with demodulation
    W''_b = W'_b / sqrt(sum_{in,kh,kw} W'_b^2 + 1e-8) per output channel. The reference runs this as a grouped
    convolution with one kernel per sample. `impl="fused"` (default) computes the same thing as "scale the input
    activations by s, one shared-weight convolution over the whole batch, demodulate the output"
    (conv(x * s, W) = conv(x, W * s) because s is constant over space, and the demodulation factor is constant per
    (sample, output channel)), which lets the backend use one large GEMM instead of B small ones.
    `impl="grouped"` is the reference formulation, kept as an oracle.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL, impl: str = "fused"):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        self.demodulate = demodulate
        self.impl = impl
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            # transposed conv gives 2H+1 (k=3); this padding brings the blurred result back to exactly 2H
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def extra_repr(self) -> str:
        return (f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, upsample={self.upsample}, "
                f"demodulate={self.demodulate}, impl={self.impl}")

    def forward(self, x: torch.Tensor, w: torch.Tensor, impl: Optional[str] = None,
                consume_input: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`consume_input=True`: the caller no longer needs `x`, so the fused path may scale it in place (only
        when autograd does not track it), saving one activation-sized allocation per layer."""
        s = self.modulation(w)  # (B, in)
        impl = impl or self.impl
        if impl == "grouped":
            return self._forward_grouped(x, s), s
        if impl != "fused":
            raise ValueError(f"ModulatedConv2d: impl must be 'fused' or 'grouped', got {impl!r}")
        weight = self.weight[0]  # (out, in, k, k), shared by the batch; `scale` is folded into the (B, in) styles
        ss = s * self.scale
        if self.kernel_size == 1 and not self.upsample:
            out = self._pointwise(x, weight, ss)
        else:
            sv = ss[:, :, None, None].to(x.dtype)
            xs = x.mul_(sv) if consume_input and _inplace_ok(x) else x * sv
            if self.upsample:
                out = F.conv_transpose2d(xs, weight.transpose(0, 1), padding=0, stride=2)
            else:
                out = F.conv2d(xs, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,kh,kw} (scale W[o,i] s_i)^2 = sum_i (scale s_i)^2 * sum_{kh,kw} W[o,i]^2  -> (B, out)
            wsq = weight.pow(2).sum(dim=(2, 3))  # (out, in)
            demod = torch.rsqrt(ss.pow(2) @ wsq.t() + self.eps)[:, :, None, None].to(out.dtype)
            # `out` is a fresh conv output: scaling it in place (when autograd does not need it) avoids a large
            # allocation, whose page faults cost more than the multiplication itself on CPU
            out = out.mul_(demod) if _inplace_ok(out) else out * demod
        if self.upsample:
            out = self.blur(out)  # blur is linear per channel, so demodulating before it is exact
        return out, s

    @staticmethod
    def _pointwise(x: torch.Tensor, weight: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
        """1x1 modulated conv (ToRGB) as one batched matmul with per-sample weights (B, out, in): with few output
        channels this avoids writing the scaled copy of the large input x (B, in, H, W). Works for NCHW and
        channels_last x without a copy (bmm takes the transposed view); returns NCHW-contiguous (B, out, H, W)."""
        b, cin, h, w_ = x.shape
        wb = weight[None, :, :, 0, 0] * ss[:, None, :].to(x.dtype)  # (B, out, in)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            xm = x.permute(0, 2, 3, 1).reshape(b, h * w_, cin).transpose(1, 2)  # (B, in, HW) view
        else:
            xm = x.reshape(b, cin, h * w_)
        return torch.bmm(wb, xm).view(b, weight.shape[0], h, w_)

    def _forward_grouped(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        b, cin, h, w_ = x.shape
        k = self.kernel_size
        weight = self.scale * self.weight * s.view(b, 1, cin, 1, 1)  # (B, out, in, k, k)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + self.eps)
            weight = weight * demod.view(b, self.out_channel, 1, 1, 1)
        xg = x.reshape(1, b * cin, h, w_)
        if self.upsample:
            wt = weight.transpose(1, 2).reshape(b * cin, self.out_channel, k, k)
            out = F.conv_transpose2d(xg, wt, padding=0, stride=2, groups=b)
            out = out.view(b, self.out_channel, out.shape[-2], out.shape[-1])
            return self.blur(out)
        out = F.conv2d(xg, weight.reshape(b * self.out_channel, cin, k, k), padding=self.padding, groups=b)
        return out.view(b, self.out_channel, out.shape[-2], out.shape[-1])


class NoiseInjection(nn.Module):
    """Adds `weight * noise` (weight: (1,), init 0). Noise modes (SPEC 1.10):

    - "cached" (reference): one (1,1,H,W) standard-normal map drawn lazily on the first forward, kept as a plain
      attribute (not in the state_dict) and reused for every frame and batch element; drawn from `rng` when given
      (on the rng's device, then moved), else from the default generator of the activation's device;
    - "const": the map passed in `noise` (the generator's `noises.noise_i` checkpoint buffer);
    - "none": no noise;
    - "random": fresh (B,1,H,W) noise every call (StyleGAN training behaviour).
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.noise: Optional[torch.Tensor] = None

    def reset_noise(self) -> None:
        """Forget the cached map; the next "cached" forward draws a new one."""
        self.noise = None

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None, mode: str = "cached",
                rng: Optional[torch.Generator] = None, inplace: bool = False) -> torch.Tensor:
        """x (B,C,H,W) -> x + weight * noise (broadcast over channels). `inplace` lets the caller that owns a
        fresh `x` (StyledConv) skip an allocation when autograd is off."""
        b, _, h, w = x.shape
        if mode == "none":
            return x
        if mode == "const":
            if noise is None:
                raise ValueError("NoiseInjection: noise_mode='const' needs the noise buffer")
            n = noise
        elif mode == "random":
            n = torch.randn(b, 1, h, w, generator=rng, device=rng.device if rng is not None else x.device)
        elif mode == "cached":
            if self.noise is None or tuple(self.noise.shape[-2:]) != (h, w):
                # without `rng` this is the reference's draw: the default generator of the activation's device
                dev = rng.device if rng is not None else x.device
                self.noise = torch.randn(1, 1, h, w, generator=rng, device=dev).to(x.device)
            elif self.noise.device != x.device:
                self.noise = self.noise.to(x.device)  # keep the same map when the model moves
            n = self.noise
        else:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        n = self.weight.to(x.dtype) * n.to(device=x.device, dtype=x.dtype)  # (B or 1, 1, H, W): small
        if inplace and _inplace_ok(x):
            return x.add_(n)
        return x + n


class ConstantInput(nn.Module):
    """Learned constant (1,C,size,size). PD-FGC replaces it by the spatial appearance code; kept for the keys."""

    def __init__(self, channel: int, size: int):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """ModulatedConv2d -> NoiseInjection -> FusedLeakyReLU (bias (1,C,1,1) as in the reference checkpoint)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL, demodulate: bool = True, impl: str = "fused"):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, demodulate=demodulate,
                                    upsample=upsample, blur_kernel=blur_kernel, impl=impl)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: Optional[torch.Tensor] = None,
                noise_mode: str = "cached", rng: Optional[torch.Generator] = None,
                consume_input: bool = False) -> torch.Tensor:
        """x (B,in,H,W), w (B,style_dim) -> (B,out,H',W'); `consume_input`: see ModulatedConv2d.forward."""
        out, _ = self.conv(x, w, consume_input=consume_input)
        out = self.noise(out, noise=noise, mode=noise_mode, rng=rng, inplace=True)
        return self.activate(out)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB + bias (1,3,1,1), plus the 2x-upsampled previous RGB skip.

    forward(x (B,C,H,W), w (B,style_dim), skip (B,3,H/2,W/2) | None) -> (rgb (B,3,H,W), s (B,C)).
    """

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL, impl: str = "fused"):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False, impl=impl)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: Optional[torch.Tensor] = None):
        out, s = self.conv(x, w)
        if _inplace_ok(out):  # fresh conv output that autograd does not track: accumulate without new buffers
            out = out.add_(self.bias)
            return (out.add_(self.upsample(skip)) if skip is not None else out), s
        out = out + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out, s
