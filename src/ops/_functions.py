"""Autograd Functions around the compiled kernels (backend "cpu" or "cuda"), differentiable to any order.

Both ops are linear in their tensor input once the static configuration (and, for the activation, the sign mask)
is fixed, so each backward is again the same kind of op and is expressed with the same Function:
  * upfirdn2d: grad_x = upfirdn2d(grad_y, flip(kernel), up=down, down=up, adjusted pads) (see
    `_params.adjoint_params`); its backward is the forward configuration again.
  * fused leaky ReLU: grad_z = grad_y * (mask ? scale : scale * slope); grad_bias = sum of grad_z over every axis
    but 1; the backward of that masked scale is the same masked scale, and the output does not depend on x
    through the mask (piecewise linear), so second derivatives w.r.t. x are zero.
The kernel of upfirdn2d is treated as a constant (no gradient): the dispatcher sends kernels that require grad
to the reference implementation.
"""
from __future__ import annotations

import torch

from . import _ext
from ._params import UpFirDnParams, adjoint_params

_UPFIRDN_EXT = {"cpu": "pdfgc_upfirdn2d", "cuda": "pdfgc_upfirdn2d_cuda"}
_ACT_EXT = {"cpu": "pdfgc_fused_act", "cuda": "pdfgc_fused_act_cuda"}


class UpFirDn2d(torch.autograd.Function):
    """upfirdn2d through the compiled kernel of `backend`; apply(x, kernel, params, backend)."""

    @staticmethod
    def forward(ctx, x, kernel, p: UpFirDnParams, backend: str):
        ops = getattr(_ext.get(_UPFIRDN_EXT[backend]), "upfirdn2d")
        y = ops(x, kernel, *p)
        ctx.save_for_backward(kernel)
        ctx.p, ctx.backend, ctx.in_hw = p, backend, (x.shape[2], x.shape[3])
        return y

    @staticmethod
    def backward(ctx, gy):
        (kernel,) = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            q = adjoint_params(ctx.p, ctx.in_hw[0], ctx.in_hw[1], kernel.shape[0], kernel.shape[1])
            gx = UpFirDn2d.apply(gy, kernel.flip([0, 1]), q, ctx.backend)
        return gx, None, None, None


class FusedLeakyReLUFn(torch.autograd.Function):
    """y = scale * leaky_relu(x + bias, slope) in one pass; saves only the bool mask (z >= 0)."""

    @staticmethod
    def forward(ctx, x, bias, slope: float, scale: float, backend: str):
        ops = _ext.get(_ACT_EXT[backend])
        b = None if bias is None else bias.reshape(-1)
        y, mask = ops.fused_lrelu_fwd(x, b, float(slope), float(scale))
        ctx.save_for_backward(mask)
        ctx.slope, ctx.scale, ctx.backend = float(slope), float(scale), backend
        ctx.bias_meta = None if bias is None else (bias.shape, bias.dtype)
        return y

    @staticmethod
    def backward(ctx, gy):
        (mask,) = ctx.saved_tensors
        need_x, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gz = gb = None
        if need_x or need_b:
            gz = MaskedScale.apply(gy, mask, ctx.slope, ctx.scale, ctx.backend)
        if need_b:
            dims = [0] + list(range(2, gz.ndim))
            shape, dtype = ctx.bias_meta
            gb = gz.sum(dims).reshape(shape).to(dtype)
        return (gz if need_x else None), gb, None, None, None


class MaskedScale(torch.autograd.Function):
    """g * (mask ? scale : scale * slope); its own gradient w.r.t. g is the same masked scale."""

    @staticmethod
    def forward(ctx, g, mask, slope: float, scale: float, backend: str):
        ops = _ext.get(_ACT_EXT[backend])
        ctx.save_for_backward(mask)
        ctx.slope, ctx.scale, ctx.backend = slope, scale, backend
        return ops.fused_lrelu_grad(g, mask, slope, scale)

    @staticmethod
    def backward(ctx, gg):
        (mask,) = ctx.saved_tensors
        return MaskedScale.apply(gg, mask, ctx.slope, ctx.scale, ctx.backend), None, None, None, None
