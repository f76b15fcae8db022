"""pdfgc_ops: the two StyleGAN2 ops PD-FGC's generator needs (SPEC 3), plus two inference-only fused element-wise
ops for the FAN motion encoder, behind one dispatch.

Public API (the contract other parts use):
    upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0), impl="auto")
    fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=sqrt(2), impl="auto")
    FusedLeakyReLU(channels, negative_slope=0.2, scale=sqrt(2))   # bias Parameter (1, C, 1, 1)
    scale_shift_relu(x, scale, shift, impl="auto")   # relu(x * scale[c] + shift[c]): eval BatchNorm + ReLU
    cat_add(parts, residual, impl="auto")            # torch.cat(parts, 1) + residual
    backend_info()

Implementations (`impl`):
    "ref"  plain PyTorch (one depthwise convolution / three element-wise ops); any device and dtype; any order
           of gradient.
    "cpu"  our C++ kernels (float32/float64, at::parallel_for), JIT-built by ninja on first use.
    "cuda" our CUDA kernels (float32/float64/float16/bfloat16), JIT-built on the first CUDA call (StyleGAN2
           ops only: the two inference ops use "ref" on CUDA, where the element-wise passes are cheap).
    "auto" the fastest available for the tensor's device, dtype and shape: never builds CUDA code for CPU tensors;
           on CPU, upfirdn2d uses the C++ kernel only at configurations where it measured faster than "ref"
           (see docs/ops.md); a failed build falls back to "ref" with one warning.
The environment variable PDFGC_OPS_IMPL (auto|ref|cpu|cuda) replaces the default "auto" (an explicit `impl`
argument other than "auto" wins over it). "cpu"/"cuda", requested either way, fail loudly instead of falling
back. Nothing is compiled at import.
"""
from __future__ import annotations

import math
import os
import threading
import warnings

import torch
from torch import nn

from . import _ext
from ._params import UpFirDnParams, check_inputs, flat_bias, parse_params
from .ref import cat_add_ref, fused_leaky_relu_ref, scale_shift_relu_ref, upfirdn2d_ref

__all__ = ["upfirdn2d", "fused_leaky_relu", "FusedLeakyReLU", "scale_shift_relu", "cat_add", "backend_info",
           "ExtensionBuildError"]

ExtensionBuildError = _ext.ExtensionBuildError
IMPLS = ("auto", "ref", "cpu", "cuda")
ENV_VAR = "PDFGC_OPS_IMPL"
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}

_state_lock = threading.Lock()
_running: dict[str, dict[str, str]] = {"upfirdn2d": {}, "fused_leaky_relu": {}, "scale_shift_relu": {},
                                       "cat_add": {}}  # op -> device -> impl last used
_warned: set[str] = set()


def _requested(impl: str) -> tuple[str, str]:
    """(implementation asked for, where the request came from: 'argument' | 'PDFGC_OPS_IMPL' | 'default')."""
    if impl not in IMPLS:
        raise ValueError(f"pdfgc_ops: impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl, "argument"
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        if env not in IMPLS:
            raise ValueError(f"pdfgc_ops: environment variable {ENV_VAR}={env!r}; expected one of {IMPLS} (or unset)")
        return env, ENV_VAR
    return "auto", "default"


def _explicit(op: str, req: str, source: str, x: torch.Tensor, ext_name: str) -> str:
    """Checks for an explicitly requested compiled implementation; raises instead of falling back."""
    where = f"impl={req!r}" if source == "argument" else f"{ENV_VAR}={req!r}"
    if x.device.type != req:
        raise ValueError(
            f"pdfgc_ops.{op}: {where} needs a {req} tensor, got one on {x.device}; "
            "move the tensor or use impl='auto'/'ref'"
        )
    if x.dtype not in _KERNEL_DTYPES[req]:
        raise TypeError(
            f"pdfgc_ops.{op}: {where} supports dtypes {_KERNEL_DTYPES[req]}, got {x.dtype}; use impl='ref'"
        )
    _ext.get(ext_name)  # ExtensionBuildError propagates: loud by request
    return req


def _auto_ext_or_ref(op: str, ext_name: str) -> str:
    """Build/load `ext_name` for impl='auto'; on failure warn once and use the reference."""
    try:
        _ext.get(ext_name)
        return "ext"
    except ExtensionBuildError as exc:
        with _state_lock:
            first = ext_name not in _warned
            _warned.add(ext_name)
        if first:
            warnings.warn(
                f"pdfgc_ops.{op}: falling back to the PyTorch reference implementation because {exc}",
                RuntimeWarning,
                stacklevel=4,
            )
        return "ref"


def _record(op: str, device: torch.device, impl: str) -> None:
    d = _running[op]
    d.pop(device.type, None)  # re-insert so that the dict's last entry is the latest call
    d[device.type] = impl


# --- upfirdn2d -------------------------------------------------------------------------------------------------

# Where the C++ kernel beats the depthwise-convolution reference on CPU (process CPU time, one thread, on the
# development machine; docs/ops.md): the reference (oneDNN) stays ahead on many channels of small planes (Blur of
# 512 x 14^2 / 28^2: 0.2-0.6x), but it loses (1) on few channels (the RGB skip: 2.2-4.8x) and (2) once a tensor
# exceeds ~32 MiB, where each allocation of its internal buffers is a fresh mmap (glibc's largest mmap
# threshold) and page faults dominate (Blur at 56-224 px: 1.5-2x).
# Channels_last inputs stay on the reference (oneDNN's NHWC path is fast; the C++ kernel would need a copy), and
# so do configurations with up > 1 and down > 1 on the same axis (the C++ kernel's slow general path).
_CPU_FEW_CHANNELS = 16
_CPU_LARGE_BYTES = 32 * 2**20


def _cpu_upfirdn_wins(x: torch.Tensor, kernel: torch.Tensor, p: UpFirDnParams) -> bool:
    if (p.ux > 1 and p.dx > 1) or (p.uy > 1 and p.dy > 1):
        return False
    if not x.is_contiguous():
        return False
    n, c, h, w = x.shape
    if c <= _CPU_FEW_CHANNELS:
        return True
    oh = (h * p.uy + p.py0 + p.py1 - kernel.shape[0]) // p.dy + 1
    ow = (w * p.ux + p.px0 + p.px1 - kernel.shape[1]) // p.dx + 1
    return max(h * w, oh * ow) * n * c * x.element_size() >= _CPU_LARGE_BYTES


def _choose_upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, p: UpFirDnParams, impl: str) -> str:
    req, source = _requested(impl)
    dev = x.device.type
    if req == "ref":
        return "ref"
    if req in ("cpu", "cuda"):
        if kernel.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"pdfgc_ops.upfirdn2d: impl={req!r} treats the kernel as a constant, but it requires grad; "
                "use impl='ref' to differentiate w.r.t. the kernel"
            )
        return _explicit("upfirdn2d", req, source, x, "pdfgc_upfirdn2d" if req == "cpu" else "pdfgc_upfirdn2d_cuda")
    # auto
    if dev not in _KERNEL_DTYPES or x.dtype not in _KERNEL_DTYPES[dev]:
        return "ref"
    if kernel.requires_grad and torch.is_grad_enabled():
        return "ref"
    if dev == "cpu" and not _cpu_upfirdn_wins(x, kernel, p):
        return "ref"
    ext = "pdfgc_upfirdn2d" if dev == "cpu" else "pdfgc_upfirdn2d_cuda"
    return dev if _auto_ext_or_ref("upfirdn2d", ext) == "ext" else "ref"


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0), impl="auto"):
    """Upsample, pad, FIR-filter and downsample every channel of x (SPEC 3.2), exactly in this order:

    1. zero insertion: y[u*i, u*j] = x[i, j], zeros elsewhere; (H, W) -> (H*uy, W*ux);
    2. pad x0/y0 zeros before and x1/y1 after (negative = crop);
    3. "valid" true 2-D convolution with `kernel` (= cross-correlation with the kernel flipped in both axes),
       the same kernel for every channel;
    4. keep every d-th row/column starting at index 0.

    Args:
        x: (N, C, H, W) float tensor (any layout; the result is NCHW-contiguous for the compiled kernels).
        kernel: (kh, kw) FIR kernel; not normalised here (callers multiply by up**2 to keep DC gain after
            zero insertion, SPEC 3.2).
        up, down: int, or (x, y) per-axis factors, >= 1.
        pad: int, (p0, p1) (same pair on both axes: the reference form) or (x0, x1, y0, y1).
        impl: "auto" | "ref" | "cpu" | "cuda" (module docstring).
    Returns:
        (N, C, OH, OW), OH = (H*uy + y0 + y1 - kh) // dy + 1, OW = (W*ux + x0 + x1 - kw) // dx + 1.
    """
    p = parse_params(up, down, pad)
    check_inputs(x, kernel, p)
    chosen = _choose_upfirdn2d(x, kernel, p, impl)
    _record("upfirdn2d", x.device, chosen)
    if chosen == "ref":
        return upfirdn2d_ref(x, kernel, p)
    from ._functions import UpFirDn2d, upfirdn2d_kernel

    if torch.is_grad_enabled() and x.requires_grad:
        return UpFirDn2d.apply(x, kernel.detach(), p, chosen)
    return upfirdn2d_kernel(x, kernel, p, chosen)  # no graph to record: skip the autograd Function


# --- fused leaky ReLU -------------------------------------------------------------------------------------------


def _choose_act(x: torch.Tensor, impl: str) -> str:
    req, source = _requested(impl)
    if req == "ref":
        return "ref"
    if req in ("cpu", "cuda"):
        return _explicit("fused_leaky_relu", req, source, x,
                         "pdfgc_fused_act" if req == "cpu" else "pdfgc_fused_act_cuda")
    dev = x.device.type
    if dev not in _KERNEL_DTYPES or x.dtype not in _KERNEL_DTYPES[dev] or x.ndim < 2:
        return "ref"
    ext = "pdfgc_fused_act" if dev == "cpu" else "pdfgc_fused_act_cuda"
    return dev if _auto_ext_or_ref("fused_leaky_relu", ext) == "ext" else "ref"


def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=math.sqrt(2), impl="auto"):
    """scale * leaky_relu(x + bias, negative_slope) (SPEC 3.1), exactly in this order:

    1. z = x + bias, bias broadcast along axis 1 (the channel axis);
    2. z if z >= 0 else negative_slope * z;
    3. multiply by `scale` (sqrt(2) keeps the activation variance near 1 under equalised learning rate).

    Args:
        x: (N, C, ...) any rank >= 2 (e.g. (N, C) after EqualLinear, (N, C, H, W) after a conv).
        bias: None, (C,) or (1, C, 1, ..., 1).
        negative_slope, scale: floats; any values are honoured.
        impl: "auto" | "ref" | "cpu" | "cuda". The compiled paths make one pass each way; for backward they keep
            only the output (CPU, slope > 0 and scale > 0) or a 1-byte sign mask.
    Returns:
        Tensor of x's shape (and, for dense NCHW / channels_last input, x's layout).
    """
    b = flat_bias(bias, x.shape[1]) if bias is not None else None  # validates the shape before any work
    chosen = _choose_act(x, impl)
    _record("fused_leaky_relu", x.device, chosen)
    if chosen == "ref":
        return fused_leaky_relu_ref(x, b, negative_slope, scale)
    from ._functions import fused_leaky_relu_ext

    return fused_leaky_relu_ext(x, bias, negative_slope, scale, chosen)


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU + gain with a learnable bias stored as (1, C, 1, 1) (the released checkpoints' layout).

    Args:
        channels: C.
        negative_slope: slope for negative inputs (0.2 in StyleGAN2).
        scale: output gain (sqrt(2)).
        impl: implementation passed to `fused_leaky_relu` (keyword-only addition to the bootstrap contract).
    """

    def __init__(self, channels, negative_slope=0.2, scale=math.sqrt(2), *, impl="auto"):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.negative_slope = negative_slope
        self.scale = scale
        self.impl = impl

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale, impl=self.impl)

    def extra_repr(self) -> str:
        return f"channels={self.bias.shape[1]}, negative_slope={self.negative_slope}, scale={self.scale:.4f}"


# --- inference-only fused element-wise ops (FAN motion encoder) -------------------------------------------------


def _choose_inference(op: str, x: torch.Tensor, needs_grad: bool, impl: str) -> str:
    """C++ kernel ("cpu") or "ref". The kernels are forward-only and CPU-only: where autograd would record a graph
    or there is no kernel (CUDA), "auto" and a process-wide PDFGC_OPS_IMPL take the reference, while an explicit
    impl="cpu"/"cuda" argument is an error."""
    req, source = _requested(impl)
    if req == "ref":
        return "ref"
    if req == "cuda":
        if source == ENV_VAR:  # a process-wide request for the StyleGAN2 kernels: these ops have none
            return "ref"
        raise ValueError(f"pdfgc_ops.{op}: there is no CUDA kernel for this op; use impl='auto' or 'ref'")
    if req == "cpu":
        if needs_grad and source == ENV_VAR:  # process-wide preference; training code still needs a graph
            return "ref"
        if needs_grad:
            raise ValueError(f"pdfgc_ops.{op}: impl='cpu' is forward-only, but autograd needs a graph here; run "
                             "under torch.no_grad()/inference_mode() or use impl='ref'")
        return _explicit(op, "cpu", source, x, "pdfgc_inference")
    if needs_grad or x.device.type != "cpu" or x.dtype not in _KERNEL_DTYPES["cpu"]:
        return "ref"
    return "cpu" if _auto_ext_or_ref(op, "pdfgc_inference") == "ext" else "ref"


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def scale_shift_relu(x, scale, shift, impl="auto"):
    """relu(x * scale + shift) with per-channel `scale`, `shift` of shape (C,) on axis 1: an eval-mode BatchNorm
    (scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale) followed by ReLU, in one pass.

    Args:
        x: (N, C, ...) float tensor; dense NCHW and channels_last are read in place and keep their layout.
        scale, shift: (C,) (any shape with C elements).
        impl: "auto" (C++ on CPU float32/float64 when no gradient is needed, else the PyTorch reference) |
            "ref" | "cpu" (forward-only: an error when autograd needs a graph).
    """
    if x.ndim < 2 or scale.numel() != x.shape[1] or shift.numel() != x.shape[1]:
        raise ValueError(f"pdfgc_ops.scale_shift_relu: scale and shift need one value per channel of x (axis 1); "
                         f"got x {tuple(x.shape)}, scale {tuple(scale.shape)}, shift {tuple(shift.shape)}")
    chosen = _choose_inference("scale_shift_relu", x, _needs_grad(x, scale, shift), impl)
    _record("scale_shift_relu", x.device, chosen)
    if chosen == "ref":
        return scale_shift_relu_ref(x, scale, shift)
    return _ext.get("pdfgc_inference").scale_shift_relu(x, scale, shift)


def cat_add(parts, residual, impl="auto"):
    """torch.cat(parts, 1) + residual in one pass, without the concatenated temporary.

    Args:
        parts: sequence of (N, C_k, ...) tensors with sum(C_k) == C, equal to `residual` outside axis 1.
        residual: (N, C, ...); the output takes its layout (dense NCHW or channels_last).
        impl: as for `scale_shift_relu`.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("pdfgc_ops.cat_add: needs at least one part")
    shapes = [tuple(p.shape) for p in parts]
    if (any(len(s) != residual.ndim or s[:1] + s[2:] != tuple(residual.shape[:1] + residual.shape[2:])
            for s in shapes) or sum(s[1] for s in shapes) != residual.shape[1]):
        raise ValueError(f"pdfgc_ops.cat_add: parts {shapes} do not concatenate along axis 1 to the residual's "
                         f"shape {tuple(residual.shape)}")
    mixed = any(p.dtype != residual.dtype or p.device != residual.device for p in parts)
    chosen = "ref" if mixed and impl == "auto" else _choose_inference("cat_add", residual,
                                                                       _needs_grad(residual, *parts), impl)
    _record("cat_add", residual.device, chosen)
    if chosen == "ref":
        return cat_add_ref(parts, residual)
    return _ext.get("pdfgc_inference").cat_add(parts, residual)


def backend_info() -> dict:
    """What was requested, what ran, and what failed to build, for this process.

    Returns a dict: `requested` (the default impl after PDFGC_OPS_IMPL), `upfirdn2d` / `fused_leaky_relu` /
    `scale_shift_relu` / `cat_add` (the implementation used by the latest call on any device, or None before the
    first call), `running`
    ({op: {device_type: impl}}), `built` (extensions loaded), `errors` ({extension: build error}),
    `extensions_dir` (TORCH_EXTENSIONS_DIR or torch's cache).
    """
    try:
        requested = _requested("auto")[0]
    except ValueError as exc:
        requested = f"invalid ({exc})"
    st = _ext.status()

    def last(op):
        d = _running[op]
        return next(reversed(d.values())) if d else None

    return {
        "requested": requested,
        "upfirdn2d": last("upfirdn2d"),
        "fused_leaky_relu": last("fused_leaky_relu"),
        "scale_shift_relu": last("scale_shift_relu"),
        "cat_add": last("cat_add"),
        "running": {op: dict(d) for op, d in _running.items()},
        "built": st["built"],
        "errors": st["errors"],
        "extensions_dir": _ext.extensions_dir(),
    }
