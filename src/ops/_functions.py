"""Autograd Functions around the compiled kernels (backend "cpu" or "cuda"), differentiable to any order.

Both ops are linear in their tensor input once the static configuration (and, for the activation, the sign mask)
is fixed, so each backward is again the same kind of op and is expressed with the same Function:
  * upfirdn2d: grad_x = upfirdn2d(grad_y, flip(kernel), up=down, down=up, adjusted pads) (see
    `_params.adjoint_params`); its backward is the forward configuration again.
  * fused leaky ReLU: grad_z = grad_y * (z >= 0 ? scale : scale * slope), the sign of z read from a saved bool
    mask or from the saved output y; grad_bias = sum of grad_z over every axis but 1 (fused into the same pass on
    CPU). The backward of that masked scale is the same masked scale, and the output does not depend on x
    through the mask (piecewise linear), so second derivatives w.r.t. x are zero.
Plain backward calls the kernels directly; with create_graph=True the same Functions are applied, so the graph
stays differentiable. On CPU the activation's graph is built by the C++ twin of these Functions
(`fused_lrelu_autograd` in csrc/fused_act_cpu.cpp), which saves a Python round trip per call.
The kernel of upfirdn2d is treated as a constant (no gradient): the dispatcher sends kernels that require grad
to the reference implementation.
"""
from __future__ import annotations

import torch

from . import _ext
from ._params import UpFirDnParams, adjoint_params

_UPFIRDN_EXT = {"cpu": "pdfgc_upfirdn2d", "cuda": "pdfgc_upfirdn2d_cuda"}
_ACT_EXT = {"cpu": "pdfgc_fused_act", "cuda": "pdfgc_fused_act_cuda"}


def upfirdn2d_kernel(x, kernel, p: UpFirDnParams, backend: str):
    """The compiled upfirdn2d of `backend`, without autograd."""
    return _ext.get(_UPFIRDN_EXT[backend]).upfirdn2d(x, kernel, *p)


class UpFirDn2d(torch.autograd.Function):
    """upfirdn2d through the compiled kernel of `backend`; apply(x, kernel, params, backend)."""

    @staticmethod
    def forward(ctx, x, kernel, p: UpFirDnParams, backend: str):
        y = upfirdn2d_kernel(x, kernel, p, backend)
        ctx.save_for_backward(kernel)
        ctx.p, ctx.backend, ctx.in_hw = p, backend, (x.shape[2], x.shape[3])
        return y

    @staticmethod
    def backward(ctx, gy):
        (kernel,) = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            q = adjoint_params(ctx.p, ctx.in_hw[0], ctx.in_hw[1], kernel.shape[0], kernel.shape[1])
            if torch.is_grad_enabled():  # create_graph=True: keep it differentiable (any order)
                gx = UpFirDn2d.apply(gy, kernel.flip([0, 1]), q, ctx.backend)
            else:
                gx = upfirdn2d_kernel(gy, kernel.flip([0, 1]), q, ctx.backend)
        return gx, None, None, None


def fused_leaky_relu_ext(x, bias, slope: float, scale: float, backend: str):
    """Compiled fused leaky ReLU; builds the autograd graph only when a gradient is needed."""
    ops = _ext.get(_ACT_EXT[backend])
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        if backend == "cpu":  # the same graph as FusedLeakyReLUFn, built in C++ (no Python per call)
            return ops.fused_lrelu_autograd(x, bias, float(slope), float(scale))
        return FusedLeakyReLUFn.apply(x, bias, float(slope), float(scale), backend)
    b = None if bias is None else bias.reshape(-1)
    if backend == "cpu":
        return ops.fused_lrelu(x, b, float(slope), float(scale))  # no mask written at all
    return ops.fused_lrelu_fwd(x, b, float(slope), float(scale))[0]


class FusedLeakyReLUFn(torch.autograd.Function):
    """y = scale * leaky_relu(x + bias, slope) in one pass.

    What is saved for backward: on CPU with slope > 0 and scale > 0, nothing new (the output y, whose sign is the
    sign of z, and which the next layer keeps alive anyway); otherwise a 1-byte mask (z >= 0).
    """

    @staticmethod
    def forward(ctx, x, bias, slope: float, scale: float, backend: str):
        ops = _ext.get(_ACT_EXT[backend])
        b = None if bias is None else bias.reshape(-1)
        if backend == "cpu" and slope > 0 and scale > 0:
            y = ops.fused_lrelu(x, b, slope, scale)
            ctx.save_for_backward(y)
        else:
            y, mask = ops.fused_lrelu_fwd(x, b, slope, scale)
            ctx.save_for_backward(mask)
        ctx.slope, ctx.scale, ctx.backend = slope, scale, backend
        ctx.bias_meta = None if bias is None else (bias.shape, bias.dtype)
        return y

    @staticmethod
    def backward(ctx, gy):
        (sign_ref,) = ctx.saved_tensors
        need_x, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gz = gb = None
        if not (need_x or need_b):
            return None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: build a differentiable graph (higher-order gradients)
            gz = MaskedScale.apply(gy, sign_ref.detach(), ctx.slope, ctx.scale, ctx.backend)
        else:  # plain backward: call the kernels directly, and get the bias gradient from the same pass
            ops = _ext.get(_ACT_EXT[ctx.backend])
            if sign_ref.dtype == torch.bool:
                gz = ops.fused_lrelu_grad(gy, sign_ref, ctx.slope, ctx.scale)
            elif need_b:
                gz, gb = ops.fused_lrelu_grad_out_bias(gy, sign_ref, ctx.slope, ctx.scale)
            else:
                gz = ops.fused_lrelu_grad_out(gy, sign_ref, ctx.slope, ctx.scale)
        shape, dtype = ctx.bias_meta if need_b else (None, None)
        if need_b and gb is None:
            gb = gz.sum([0] + list(range(2, gz.ndim)))
        if need_b:
            gb = gb.reshape(shape).to(dtype)
        return (gz if need_x else None), gb, None, None, None


class MaskedScale(torch.autograd.Function):
    """g * (z >= 0 ? scale : scale * slope), the sign of z given by a bool mask or by the saved output y.

    Linear in g with a piecewise-constant factor, so its gradient w.r.t. g is the same masked scale.
    """

    @staticmethod
    def forward(ctx, g, sign_ref, slope: float, scale: float, backend: str):
        ops = _ext.get(_ACT_EXT[backend])
        ctx.save_for_backward(sign_ref)
        ctx.slope, ctx.scale, ctx.backend = slope, scale, backend
        if sign_ref.dtype == torch.bool:
            return ops.fused_lrelu_grad(g, sign_ref, slope, scale)
        return ops.fused_lrelu_grad_out(g, sign_ref, slope, scale)

    @staticmethod
    def backward(ctx, gg):
        (sign_ref,) = ctx.saved_tensors
        return MaskedScale.apply(gg, sign_ref, ctx.slope, ctx.scale, ctx.backend), None, None, None, None
