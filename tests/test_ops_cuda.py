"""CUDA side of pdfgc_ops: a compile-only check of the .cu sources with nvcc (marked slow: ~1-2 min on 2 cores)
and parity/gradient tests on a GPU (marked cuda; skipped without one)."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import pdfgc_ops
from pdfgc_ops import _ext

CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pdfgc_upfirdn2d_cuda", "pdfgc_fused_act_cuda"])
def test_cuda_sources_compile_with_nvcc(name, tmp_path):
    """Compile (and link) the CUDA extension with nvcc; works without a GPU. Loading may fail without a driver,
    so success = the object and the shared library exist."""
    nvcc = Path(CUDA_HOME) / "bin" / "nvcc"
    if not nvcc.exists() and shutil.which("nvcc") is None:
        pytest.skip(f"nvcc not found under CUDA_HOME={CUDA_HOME} nor on PATH")
    script = textwrap.dedent(
        f"""
        import sys
        from torch.utils import cpp_extension
        from pdfgc_ops import _ext
        srcs = [str(_ext.CSRC / s) for s in _ext.EXTENSIONS[{name!r}]]
        try:
            cpp_extension.load(name={name!r}, sources=srcs, build_directory={str(tmp_path)!r},
                               is_python_module=False, verbose=True, **_ext.build_flags({name!r}))
            print("LOADED")
        except (OSError, ImportError, RuntimeError) as exc:  # no driver/GPU: compile + link is what we test
            print("LOAD-FAILED", type(exc).__name__, exc)
        """
    )
    env = dict(os.environ, CUDA_HOME=CUDA_HOME, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"))
    env["PATH"] = f"{CUDA_HOME}/bin:" + env.get("PATH", "")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    objects = list(tmp_path.glob("*.cuda.o"))
    assert objects, f"nvcc produced no object for {name}; build log tail:\n{log[-6000:]}"
    assert (tmp_path / f"{name}.so").exists(), f"{name}.so was not linked; build log tail:\n{log[-6000:]}"


needs_gpu = pytest.mark.cuda


def _naive_upfirdn(x, k, up, down, pad):
    # the same independent CPU float64 oracle as the CPU tests (zero insertion, pad/crop, true convolution, decimation)
    from test_ops import oracle_scipy

    return oracle_scipy(x, k, up, down, pad)


CONFIGS = [
    ((1, 1), (1, 1), (1, 1, 1, 1), (4, 4)),
    ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4)),
    ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4)),
    ((3, 2), (2, 3), (-1, 2, 3, -2), (3, 5)),
]


@needs_gpu
@pytest.mark.parametrize("up,down,pad,ks", CONFIGS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float16, 2e-2)])
def test_cuda_upfirdn2d_matches_oracle(up, down, pad, ks, dtype, tol):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    k = torch.randn(*ks, dtype=torch.float64)
    want = _naive_upfirdn(x.numpy(), k.numpy(), up, down, pad)
    got = pdfgc_ops.upfirdn2d(x.cuda().to(dtype), k.cuda().to(dtype), up=up, down=down, pad=pad, impl="cuda")
    np.testing.assert_allclose(got.double().cpu().numpy(), want, atol=tol * 10, rtol=tol)


@needs_gpu
@pytest.mark.parametrize("up,down,pad,ks", CONFIGS)
def test_cuda_upfirdn2d_gradcheck_gradgradcheck(up, down, pad, ks):
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    k = torch.randn(*ks, dtype=torch.float64, device="cuda")

    def f(t):
        return pdfgc_ops.upfirdn2d(t, k, up=up, down=down, pad=pad, impl="cuda")

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@needs_gpu
@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_fused_leaky_relu_parity_and_gradients(shape, channels_last):
    x = torch.randn(*shape, dtype=torch.float64, device="cuda")
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(1, shape[1], 1, 1, dtype=torch.float64, device="cuda")
    z = x.cpu().numpy() + b.reshape([1, -1] + [1] * (x.ndim - 2)).cpu().numpy()
    want = np.where(z >= 0, z, -0.3 * z) * 1.7
    got = pdfgc_ops.fused_leaky_relu(x, b, -0.3, 1.7, impl="cuda")
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-13, atol=1e-13)
    xg = (x + 0.1 * x.sign()).requires_grad_(True)
    bg = (0.01 * b).requires_grad_(True)

    def f(t, bb):
        return pdfgc_ops.fused_leaky_relu(t, bb, 0.2, math.sqrt(2), impl="cuda")

    assert torch.autograd.gradcheck(f, (xg, bg))
    assert torch.autograd.gradgradcheck(f, (xg, bg))


@needs_gpu
def test_cuda_auto_uses_cuda_kernels():
    x = torch.randn(2, 4, 8, 8, device="cuda")
    pdfgc_ops.fused_leaky_relu(x, torch.zeros(4, device="cuda"))
    pdfgc_ops.upfirdn2d(x, torch.ones(4, 4, device="cuda") / 16, up=2, pad=(2, 1))
    info = pdfgc_ops.backend_info()
    assert info["running"]["fused_leaky_relu"]["cuda"] == "cuda", info
    assert info["running"]["upfirdn2d"]["cuda"] == "cuda", info
    assert "pdfgc_upfirdn2d_cuda" in _ext.status()["built"]
