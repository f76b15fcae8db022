"""Argument normalisation shared by every implementation of the ops (one place for the size arithmetic)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class UpFirDnParams(NamedTuple):
    """Static configuration of one upfirdn2d call, per axis (x = width, y = height), all ints.

    Pads are (x0, x1, y0, y1): zeros added before/after on each axis after upsampling; negative values crop.
    """

    ux: int
    uy: int
    dx: int
    dy: int
    px0: int
    px1: int
    py0: int
    py1: int


def _pair(value, name: str) -> tuple[int, int]:
    """int or (x, y) -> (x, y) of positive ints."""
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"upfirdn2d: `{name}` must be an int or an (x, y) pair, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"upfirdn2d: `{name}` factors must be >= 1, got {value!r}")
    return pair


def parse_params(up, down, pad) -> UpFirDnParams:
    """Normalise the public `up`, `down`, `pad` arguments.

    up, down: int (both axes) or (x, y). pad: int (all four sides), (p0, p1) (same pair on both axes, the
    reference form), or (x0, x1, y0, y1).
    """
    ux, uy = _pair(up, "up")
    dx, dy = _pair(down, "down")
    if isinstance(pad, int):
        p = (pad,) * 4
    else:
        p = tuple(int(v) for v in pad)
        if len(p) == 2:
            p = (p[0], p[1], p[0], p[1])
        elif len(p) != 4:
            raise ValueError(f"upfirdn2d: `pad` must be an int, (p0, p1) or (x0, x1, y0, y1), got {pad!r}")
    return UpFirDnParams(ux, uy, dx, dy, *p)


def out_size(in_size: int, up: int, pad0: int, pad1: int, k: int, down: int) -> int:
    """SPEC 3.2 output size on one axis: floor((in*up + pad0 + pad1 - k) / down) + 1."""
    return (in_size * up + pad0 + pad1 - k) // down + 1


def check_inputs(x: torch.Tensor, kernel: torch.Tensor, p: UpFirDnParams) -> None:
    """Raise a clear error for shapes the op cannot handle."""
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if kernel.ndim != 2:
        raise ValueError(f"upfirdn2d: kernel must be 2-D (kh, kw), got shape {tuple(kernel.shape)}")
    kh, kw = kernel.shape
    oh = out_size(x.shape[2], p.uy, p.py0, p.py1, kh, p.dy)
    ow = out_size(x.shape[3], p.ux, p.px0, p.px1, kw, p.dx)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"upfirdn2d: empty output ({oh}x{ow}) for input {tuple(x.shape)}, kernel {tuple(kernel.shape)}, {p}; "
            "increase the padding or the input size"
        )


def adjoint_params(p: UpFirDnParams, in_h: int, in_w: int, kh: int, kw: int) -> UpFirDnParams:
    """Configuration whose upfirdn2d (with the flipped kernel) is the adjoint (= gradient w.r.t. x) of `p`.

    Per axis, forward = down_d . conv_k . pad_(p0,p1) . up_u. Its adjoint is up_u^T = keep every u-th sample
    (down by u), pad^T = crop, conv_k^T = full convolution with flip(k), down_d^T = zero insertion (up by d).
    Zero-inserting the incoming gradient (O samples) gives O*d samples of which only the first
    M = in*u + p0 + p1 - k + 1 belong to the forward conv output, so E = O*d - M trailing zeros are cropped.
    Hence: up=d, down=u, pad0 = k - 1 - p0, pad1 = k - 1 - p1 - E; the result has exactly `in` samples.
    """

    def axis(n, u, d, p0, p1, k):
        m = n * u + p0 + p1 - k + 1
        o = (m - 1) // d + 1
        e = o * d - m
        return k - 1 - p0, k - 1 - p1 - e

    qx0, qx1 = axis(in_w, p.ux, p.dx, p.px0, p.px1, kw)
    qy0, qy1 = axis(in_h, p.uy, p.dy, p.py0, p.py1, kh)
    return UpFirDnParams(p.dx, p.dy, p.ux, p.uy, qx0, qx1, qy0, qy1)


def flat_bias(bias: torch.Tensor | None, channels: int) -> torch.Tensor | None:
    """Bias of shape (C,) or (1, C, 1, ..., 1) -> (C,) view; anything else is an error."""
    if bias is None:
        return None
    if bias.numel() != channels or (bias.ndim > 1 and bias.shape[1] != channels) or (
        bias.ndim == 1 and bias.shape[0] != channels
    ):
        raise ValueError(
            f"fused_leaky_relu: bias must have shape ({channels},) or (1, {channels}, 1, 1) to match x's channel "
            f"axis 1, got {tuple(bias.shape)}"
        )
    return bias.reshape(channels)
