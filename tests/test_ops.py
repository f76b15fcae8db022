"""pdfgc_ops against independent oracles: naive numpy loops / scipy for upfirdn2d, numpy for the activation,
hand-computed impulse responses, DC gains, sizes and gradients; gradcheck/gradgradcheck in float64; dispatch.

The "cpu" implementation needs the C++ extension: it is built once (about 20 s here; cached under
TORCH_EXTENSIONS_DIR) by the first test that uses it. Tests that need a compiler skip when none is found.
"""
from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

import pdfgc_ops
from pdfgc_ops import _ext

HAVE_CXX = shutil.which("c++") is not None or shutil.which("g++") is not None


def _cpu_available() -> bool:
    if not HAVE_CXX:
        return False
    try:
        _ext.get("pdfgc_upfirdn2d")
        _ext.get("pdfgc_fused_act")
        return True
    except _ext.ExtensionBuildError:
        return False


CPU_IMPLS = ["ref", pytest.param("cpu", marks=pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler"))]


@pytest.fixture(params=CPU_IMPLS)
def impl(request):
    if request.param == "cpu" and not _cpu_available():
        pytest.fail(f"C++ extension did not build: {_ext.status()['errors']}")
    return request.param


# ----------------------------------------------------------------------------------------------------------------
# upfirdn2d oracles


def oracle_scipy(x: np.ndarray, k: np.ndarray, up, down, pad) -> np.ndarray:
    """SPEC 3.2 literally: zero insertion, pad/crop, scipy 'valid' true convolution, decimation."""
    ux, uy = up
    dx, dy = down
    x0, x1, y0, y1 = pad
    n, c, h, w = x.shape
    out = []
    for plane in x.reshape(-1, h, w):
        y = np.zeros((h * uy, w * ux))
        y[::uy, ::ux] = plane
        y = np.pad(y, ((max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
        y = y[max(-y0, 0): y.shape[0] - max(-y1, 0), max(-x0, 0): y.shape[1] - max(-x1, 0)]
        out.append(convolve2d(y, k, mode="valid")[::dy, ::dx])
    return np.stack(out).reshape(n, c, *out[0].shape)


def oracle_loops(x: np.ndarray, k: np.ndarray, up, down, pad) -> np.ndarray:
    """Direct sum: out[oy, ox] = sum over (i, j) of x[i, j] * k[oy*dy - uy*i + kh-1 - y0, ox*dx - ux*j + kw-1 - x0]."""
    ux, uy = up
    dx, dy = down
    x0, x1, y0, y1 = pad
    n, c, h, w = x.shape
    kh, kw = k.shape
    oh = (h * uy + y0 + y1 - kh) // dy + 1
    ow = (w * ux + x0 + x1 - kw) // dx + 1
    out = np.zeros((n, c, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            for i in range(h):
                a = oy * dy - uy * i + kh - 1 - y0
                if not 0 <= a < kh:
                    continue
                for j in range(w):
                    b = ox * dx - ux * j + kw - 1 - x0
                    if 0 <= b < kw:
                        out[:, :, oy, ox] += x[:, :, i, j] * k[a, b]
    return out


CONFIGS = [  # (up (x, y), down (x, y), pad (x0, x1, y0, y1), kernel (kh, kw))
    ((1, 1), (1, 1), (1, 1, 1, 1), (4, 4)),  # Blur
    ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4)),  # Upsample (ToRGB skip)
    ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4)),  # Downsample
    ((2, 2), (2, 2), (1, 2, 1, 2), (4, 4)),
    ((3, 2), (2, 3), (-1, 2, 3, -2), (3, 5)),  # asymmetric everything, negative pads
    ((2, 3), (1, 1), (0, -1, 2, 2), (5, 2)),
    ((1, 2), (3, 1), (0, 0, 0, 0), (1, 1)),
]


@pytest.mark.parametrize("up,down,pad,ks", CONFIGS)
def test_upfirdn2d_matches_scipy_oracle(impl, up, down, pad, ks):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=g)
    k = torch.randn(*ks, dtype=torch.float64, generator=g)
    want = oracle_scipy(x.numpy(), k.numpy(), up, down, pad)
    got = pdfgc_ops.upfirdn2d(x, k, up=up, down=down, pad=pad, impl=impl)
    assert tuple(got.shape) == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    # float32 as well, against the same double-precision oracle
    got32 = pdfgc_ops.upfirdn2d(x.float(), k.float(), up=up, down=down, pad=pad, impl=impl)
    np.testing.assert_allclose(got32.numpy(), want, rtol=0, atol=1e-5)


def test_oracles_agree_with_each_other():
    # the two oracles are written differently (literal pipeline vs. direct index sum): they must agree
    rng = np.random.default_rng(0)
    for up, down, pad, ks in CONFIGS:
        x = rng.standard_normal((1, 2, 5, 4))
        k = rng.standard_normal(ks)
        np.testing.assert_allclose(oracle_loops(x, k, up, down, pad), oracle_scipy(x, k, up, down, pad), atol=1e-12)


def test_upfirdn2d_impulse_response_is_the_unflipped_kernel(impl):
    # true convolution: a unit impulse, padded by k-1 on every side, reproduces the kernel as stored
    k = torch.arange(1.0, 13.0, dtype=torch.float64).reshape(3, 4)  # asymmetric: a flip would show
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    x[0, 0, 0, 0] = 1.0
    y = pdfgc_ops.upfirdn2d(x, k, pad=(3, 3, 2, 2), impl=impl)
    assert torch.equal(y[0, 0], k)
    # impulse at (1, 2) of a 3x4 input, up=2: the kernel lands at (2*1, 2*2) of the zero-inserted grid
    x = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
    x[0, 0, 1, 2] = 1.0
    y = pdfgc_ops.upfirdn2d(x, k, up=2, pad=(3, 3, 2, 2), impl=impl)  # full convolution: 8 x 11
    want = torch.zeros(3 * 2 + 2 + 2 - 3 + 1, 4 * 2 + 3 + 3 - 4 + 1, dtype=torch.float64)
    want[2 : 2 + 3, 4 : 4 + 4] = k
    assert torch.equal(y[0, 0], want)


def _make_kernel(taps, gain=1.0):
    k = torch.tensor(taps, dtype=torch.float64)
    k = torch.outer(k, k)
    return k / k.sum() * gain


def test_upfirdn2d_dc_gain(impl):
    ones = torch.ones(2, 3, 8, 8, dtype=torch.float64)
    # Upsample of the ToRGB skip (SPEC 2.5): kernel [1,3,3,1] x 4, up 2, pad (2, 1) -> 2H, interior exactly 1
    y = pdfgc_ops.upfirdn2d(ones, _make_kernel([1, 3, 3, 1], 4), up=2, pad=(2, 1), impl=impl)
    assert y.shape == (2, 3, 16, 16)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.ones_like(y[..., 2:-2, 2:-2]), rtol=0, atol=1e-14)
    # Blur: kernel x 4, pad (1, 1) -> H - 1 ... interior gain 4 (it follows a stride-2 transposed conv)
    y = pdfgc_ops.upfirdn2d(ones, _make_kernel([1, 3, 3, 1], 4), pad=(1, 1), impl=impl)
    assert y.shape == (2, 3, 7, 7)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 4.0), rtol=0, atol=1e-14)
    # Downsample: normalised kernel, down 2: interior 1; border value = the kernel mass inside: 1*(3+3+1)/8 per
    # axis at the first output (pad 1 puts one tap outside) -> (7/8)^2 at the corner
    y = pdfgc_ops.upfirdn2d(ones, _make_kernel([1, 3, 3, 1]), down=2, pad=(1, 1), impl=impl)
    assert y.shape == (2, 3, 4, 4)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.ones_like(y[..., 1:-1, 1:-1]), rtol=0, atol=1e-14)
    assert abs(y[0, 0, 0, 0].item() - (7 / 8) ** 2) < 1e-14


@pytest.mark.parametrize(
    "h,w,up,down,pad,ks,oh,ow",
    [  # output sizes worked out by hand from floor((H*u + p0 + p1 - k) / d) + 1
        (7, 7, 2, 1, (2, 1), (4, 4), 14, 14),
        (15, 15, 1, 1, (1, 1), (4, 4), 14, 14),  # blur after the 2H+1 transposed conv
        (9, 10, 1, 2, (1, 1), (4, 4), 4, 5),
        (5, 6, (3, 2), (2, 3), (-1, 2, 3, -2), (3, 5), 3, 8),  # (10+3-2-3)//3+1, (18-1+2-5)//2+1
        (4, 4, 1, 3, (0, 0), (1, 1), 2, 2),
    ],
)
def test_upfirdn2d_output_size(impl, h, w, up, down, pad, ks, oh, ow):
    x = torch.randn(1, 2, h, w)
    y = pdfgc_ops.upfirdn2d(x, torch.ones(*ks), up=up, down=down, pad=pad, impl=impl)
    assert tuple(y.shape) == (1, 2, oh, ow)


def test_upfirdn2d_negative_pad_crops(impl):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    one = torch.ones(1, 1, dtype=torch.float64)
    y = pdfgc_ops.upfirdn2d(x, one, pad=(-1, -2, -3, 0), impl=impl)  # x0, x1, y0, y1
    assert torch.equal(y, x[:, :, 3:, 1:-2])
    y = pdfgc_ops.upfirdn2d(x, one, pad=(-1, -1), impl=impl)  # reference 2-tuple form: both axes
    assert torch.equal(y, x[:, :, 1:-1, 1:-1])


def test_upfirdn2d_noncontiguous_and_channels_last(impl):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(3, 2, 9, 8, dtype=torch.float64, generator=g)
    k = torch.randn(4, 4, dtype=torch.float64, generator=g)
    want = oracle_scipy(base.numpy(), k.numpy(), (2, 2), (1, 1), (2, 1, 2, 1))
    variants = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "transposed": base.transpose(2, 3).contiguous().transpose(2, 3),
        "strided": torch.zeros(3, 4, 9, 8, dtype=torch.float64).index_copy_(1, torch.tensor([0, 2]), base)[:, ::2],
    }
    for name, x in variants.items():
        assert not x.is_contiguous(), name
        y = pdfgc_ops.upfirdn2d(x, k, up=2, pad=(2, 1), impl=impl)
        np.testing.assert_allclose(y.numpy(), want, atol=1e-12, err_msg=name)
    # a non-contiguous kernel too
    kt = k.t()
    y = pdfgc_ops.upfirdn2d(base, kt, pad=(1, 2), impl=impl)
    np.testing.assert_allclose(y.numpy(), oracle_scipy(base.numpy(), kt.numpy(), (1, 1), (1, 1), (1, 2, 1, 2)),
                               atol=1e-12)


@pytest.mark.parametrize("up,down,pad,ks", CONFIGS[:6])
def test_upfirdn2d_gradcheck_and_gradgradcheck(impl, up, down, pad, ks):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(*ks, dtype=torch.float64, generator=g)

    def f(t):
        return pdfgc_ops.upfirdn2d(t, k, up=up, down=down, pad=pad, impl=impl)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_upfirdn2d_ref_kernel_gradient():
    # the reference also differentiates w.r.t. the kernel (d out / d k is the shifted input: linear in k)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    k = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda kk: pdfgc_ops.upfirdn2d(x, kk, up=2, pad=(1, 1), impl="ref"), (k,))


def test_upfirdn2d_bad_arguments():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="pad"):
        pdfgc_ops.upfirdn2d(x, torch.ones(2, 2), pad=(1, 1, 1))
    with pytest.raises(ValueError, match="empty output"):
        pdfgc_ops.upfirdn2d(x, torch.ones(3, 3), pad=(-2, -2))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pdfgc_ops.upfirdn2d(x[0], torch.ones(2, 2))
    with pytest.raises(ValueError, match="up"):
        pdfgc_ops.upfirdn2d(x, torch.ones(2, 2), up=0)


# ----------------------------------------------------------------------------------------------------------------
# fused leaky ReLU


def act_oracle(x: np.ndarray, bias, slope, scale) -> np.ndarray:
    z = x if bias is None else x + np.asarray(bias).reshape([1, -1] + [1] * (x.ndim - 2))
    return np.where(z >= 0, z, slope * z) * scale


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 11), (2, 3, 4, 5)])
@pytest.mark.parametrize("bias_kind", ["none", "C", "1C11"])
@pytest.mark.parametrize("slope,scale", [(0.2, math.sqrt(2)), (0.0, 1.0), (-0.5, 3.0), (1.3, 0.5)])
def test_fused_leaky_relu_matches_numpy(impl, shape, bias_kind, slope, scale):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(*shape, dtype=torch.float64, generator=g)
    c = shape[1]
    bias = {"none": None, "C": torch.randn(c, dtype=torch.float64, generator=g)}.get(bias_kind)
    if bias_kind == "1C11":
        bias = torch.randn(1, c, 1, 1, dtype=torch.float64, generator=g)
    want = act_oracle(x.numpy(), None if bias is None else bias.reshape(-1).numpy(), slope, scale)
    got = pdfgc_ops.fused_leaky_relu(x, bias, slope, scale, impl=impl)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14, atol=1e-14)
    got32 = pdfgc_ops.fused_leaky_relu(x.float(), None if bias is None else bias.float(), slope, scale, impl=impl)
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-6, atol=1e-6)


def test_fused_leaky_relu_hand_values_and_gradient(impl):
    x = torch.tensor([[-1.0, 2.0], [0.5, -4.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    y = pdfgc_ops.fused_leaky_relu(x, b, negative_slope=0.1, scale=2.0, impl=impl)
    # z = [[-0.5, 1.0], [1.0, -5.0]] -> y = 2 * [[-0.05, 1.0], [1.0, -0.5]]
    torch.testing.assert_close(y, torch.tensor([[-0.1, 2.0], [2.0, -1.0]], dtype=torch.float64), rtol=0, atol=1e-15)
    y.sum().backward()
    # d y / d z = 2 where z >= 0, 0.2 where z < 0; bias gradient = column sums
    torch.testing.assert_close(x.grad, torch.tensor([[0.2, 2.0], [2.0, 0.2]], dtype=torch.float64))
    torch.testing.assert_close(b.grad, torch.tensor([2.2, 2.2], dtype=torch.float64))


def test_fused_leaky_relu_noncontiguous_and_channels_last(impl):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2, 6, 5, 4, dtype=torch.float64, generator=g)
    bias = torch.randn(1, 6, 1, 1, dtype=torch.float64, generator=g)
    want = act_oracle(base.numpy(), bias.reshape(-1).numpy(), 0.2, math.sqrt(2))
    cl = base.contiguous(memory_format=torch.channels_last)
    y = pdfgc_ops.fused_leaky_relu(cl, bias, impl=impl)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-14, atol=1e-14)
    assert y.is_contiguous(memory_format=torch.channels_last)  # layout kept: no hidden copy for the next conv
    tr = base.transpose(2, 3).contiguous().transpose(2, 3)
    np.testing.assert_allclose(pdfgc_ops.fused_leaky_relu(tr, bias, impl=impl).numpy(), want, rtol=1e-14, atol=1e-14)
    # gradient through channels_last input matches the oracle derivative
    z = base.numpy() + bias.reshape(1, -1, 1, 1).numpy()
    dz = np.where(z >= 0, 1.0, 0.2) * math.sqrt(2)
    for x_in in (cl, base):  # channels_last and contiguous take different bias-gradient paths
        xg = x_in.clone().requires_grad_(True)
        bg = bias.clone().requires_grad_(True)
        pdfgc_ops.fused_leaky_relu(xg, bg, impl=impl).backward(torch.ones_like(base))
        np.testing.assert_allclose(xg.grad.numpy(), dz, rtol=1e-14)
        np.testing.assert_allclose(bg.grad.numpy(), dz.sum(axis=(0, 2, 3)).reshape(1, -1, 1, 1), rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 5)])
@pytest.mark.parametrize("slope,scale", [(0.2, math.sqrt(2)), (-0.3, 0.7)])
def test_fused_leaky_relu_gradcheck_and_gradgradcheck(impl, shape, slope, scale):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(*shape, dtype=torch.float64, generator=g)
    x = (x + 0.1 * x.sign()).requires_grad_(True)  # keep |z| away from the kink for finite differences
    b = (0.01 * torch.randn(shape[1], dtype=torch.float64, generator=g)).requires_grad_(True)

    def f(t, bb):
        return pdfgc_ops.fused_leaky_relu(t, bb, slope, scale, impl=impl)

    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))


def test_fused_leaky_relu_module_bias_layout():
    m = pdfgc_ops.FusedLeakyReLU(5)
    assert isinstance(m.bias, torch.nn.Parameter) and tuple(m.bias.shape) == (1, 5, 1, 1)
    assert list(m.state_dict()) == ["bias"]
    m.load_state_dict({"bias": torch.arange(5.0).reshape(1, 5, 1, 1)})  # released-checkpoint layout
    x = -torch.ones(2, 5, 3, 3)
    want = act_oracle(x.numpy(), np.arange(5.0), 0.2, math.sqrt(2))
    np.testing.assert_allclose(m(x).detach().numpy(), want, rtol=1e-6)


def test_fused_leaky_relu_bad_bias():
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        pdfgc_ops.fused_leaky_relu(torch.randn(2, 4, 3, 3), torch.zeros(3))


# ----------------------------------------------------------------------------------------------------------------
# dispatch


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """Isolate the extension cache, the warn-once set and the environment variable."""
    monkeypatch.setattr(_ext, "_loaded", {})
    monkeypatch.setattr(_ext, "_errors", {})
    monkeypatch.setattr(pdfgc_ops, "_warned", set())
    monkeypatch.setattr(pdfgc_ops, "_running", {op: {} for op in pdfgc_ops._running})
    monkeypatch.delenv("PDFGC_OPS_IMPL", raising=False)
    return monkeypatch


def test_auto_on_cpu_never_builds_cuda(fresh_dispatch):
    asked = []

    def fake_build(name):
        asked.append(name)
        raise RuntimeError("no compiler in this test")

    fresh_dispatch.setattr(_ext, "_build", fake_build)
    x = torch.randn(2, 4, 9, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pdfgc_ops.fused_leaky_relu(x, torch.zeros(4))
        for up, down in [(1, 1), (2, 1), (1, 2)]:
            pdfgc_ops.upfirdn2d(x, torch.ones(4, 4), up=up, down=down, pad=(1, 1))
    assert asked and not [a for a in asked if "cuda" in a]


def test_failed_build_falls_back_to_ref_with_one_warning(fresh_dispatch):
    calls = []

    def fake_build(name):
        calls.append(name)
        raise RuntimeError("simulated compiler error: ninja exited 1")

    fresh_dispatch.setattr(_ext, "_build", fake_build)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="falling back to the PyTorch reference") as rec:
        y1 = pdfgc_ops.fused_leaky_relu(x, b)
        y2 = pdfgc_ops.fused_leaky_relu(x, b)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert "simulated compiler error" in str(rec[0].message)
    assert calls == ["pdfgc_fused_act"]  # a failure is remembered: no second build attempt
    want = act_oracle(x.numpy(), b.numpy(), 0.2, math.sqrt(2))
    np.testing.assert_allclose(y1.numpy(), want, rtol=1e-14)
    assert torch.equal(y1, y2)
    info = pdfgc_ops.backend_info()
    assert info["requested"] == "auto" and info["fused_leaky_relu"] == "ref"
    assert "simulated compiler error" in info["errors"]["pdfgc_fused_act"]
    # asked explicitly, the same failure is loud
    with pytest.raises(pdfgc_ops.ExtensionBuildError, match="pdfgc_fused_act"):
        pdfgc_ops.fused_leaky_relu(x, b, impl="cpu")


def test_explicit_impl_errors(fresh_dispatch):
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="needs a cuda tensor"):
        pdfgc_ops.upfirdn2d(x, torch.ones(2, 2), impl="cuda")
    with pytest.raises(ValueError, match="needs a cuda tensor"):
        pdfgc_ops.fused_leaky_relu(x, impl="cuda")
    with pytest.raises(TypeError, match="dtypes"):
        pdfgc_ops.fused_leaky_relu(x.half(), impl="cpu")
    with pytest.raises(ValueError, match="impl must be one of"):
        pdfgc_ops.fused_leaky_relu(x, impl="fast")


def test_environment_variable_overrides_default(fresh_dispatch):
    def no_build(name):
        raise AssertionError(f"PDFGC_OPS_IMPL=ref must not build {name}")

    fresh_dispatch.setattr(_ext, "_build", no_build)
    fresh_dispatch.setenv("PDFGC_OPS_IMPL", "ref")
    x = torch.randn(2, 3, 5, 5)
    pdfgc_ops.fused_leaky_relu(x, torch.zeros(3))
    pdfgc_ops.upfirdn2d(x, torch.ones(2, 2), pad=(1, 0))
    info = pdfgc_ops.backend_info()
    assert info["requested"] == "ref"
    assert info["upfirdn2d"] == "ref" and info["fused_leaky_relu"] == "ref"
    assert info["running"]["fused_leaky_relu"] == {"cpu": "ref"}
    # the env var names the default only: an explicit non-auto argument still wins
    fresh_dispatch.setenv("PDFGC_OPS_IMPL", "cuda")
    pdfgc_ops.fused_leaky_relu(x, impl="ref")
    with pytest.raises(ValueError, match="PDFGC_OPS_IMPL='cuda' needs a cuda tensor"):
        pdfgc_ops.fused_leaky_relu(x)
    fresh_dispatch.setenv("PDFGC_OPS_IMPL", "turbo")
    with pytest.raises(ValueError, match="PDFGC_OPS_IMPL"):
        pdfgc_ops.fused_leaky_relu(x)


def test_auto_uses_compiled_activation_on_cpu():
    if not _cpu_available():
        pytest.skip("C++ extension unavailable")
    x = torch.randn(2, 3, 4, 4)
    pdfgc_ops.fused_leaky_relu(x, torch.zeros(3))
    assert pdfgc_ops.backend_info()["running"]["fused_leaky_relu"]["cpu"] == "cpu"
    # dtypes without a C++ kernel stay on the reference
    pdfgc_ops.fused_leaky_relu(x.bfloat16(), torch.zeros(3))
    assert pdfgc_ops.backend_info()["running"]["fused_leaky_relu"]["cpu"] == "ref"


def test_auto_upfirdn2d_policy_on_cpu():
    """auto = the C++ kernel only where it measured faster (few channels or > 32 MiB tensors, NCHW input)."""
    if not _cpu_available():
        pytest.skip("C++ extension unavailable")
    k = torch.ones(4, 4) / 16

    def ran(x, **kw):
        pdfgc_ops.upfirdn2d(x, k, **kw)
        return pdfgc_ops.backend_info()["running"]["upfirdn2d"]["cpu"]

    assert ran(torch.randn(2, 3, 8, 8), up=2, pad=(2, 1)) == "cpu"  # RGB skip
    assert ran(torch.randn(2, 64, 8, 8), pad=(1, 1)) == "ref"  # many channels, small
    assert ran(torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last), pad=(1, 1)) == "ref"
    assert ran(torch.randn(2, 3, 8, 8), up=2, down=2, pad=(1, 1)) == "ref"  # general path
    assert ran(torch.randn(2, 3, 8, 8, dtype=torch.bfloat16), pad=(1, 1)) == "ref"  # no bf16 C++ kernel
    assert ran(torch.randn(2, 3, 8, 8), pad=(1, 1)) == "cpu"
    # kernels that need a gradient stay on the reference (the compiled kernels treat the filter as a constant)
    assert ran(torch.randn(2, 3, 8, 8), pad=(1, 1)) == "cpu"
    pdfgc_ops.upfirdn2d(torch.randn(2, 3, 8, 8), k.clone().requires_grad_(True), pad=(1, 1))
    assert pdfgc_ops.backend_info()["running"]["upfirdn2d"]["cpu"] == "ref"


def test_fused_leaky_relu_mask_path_channels_last_gradients(impl):
    # slope <= 0 cannot read the sign of z from y: the compiled path saves a mask; check it on channels_last too
    base = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    base = base + 0.1 * base.sign()
    for slope in (-0.3, 0.0):
        x = base.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        y = pdfgc_ops.fused_leaky_relu(x, None, slope, 1.5, impl=impl)
        # the upstream gradient is a leaf that needs grad, as in R1 (whose gradient penalty differentiates through
        # the first backward): the first-order gradient must stay differentiable w.r.t. it
        gy = torch.ones_like(y).requires_grad_(True)
        (gx,) = torch.autograd.grad(y, x, gy, create_graph=True)
        mask = np.where(base.numpy() >= 0, 1.5, 1.5 * slope)
        np.testing.assert_allclose(gx.detach().numpy(), mask, rtol=1e-14)
        assert gx.requires_grad  # no silent skip: the second-order checks below must run
        w = torch.arange(gx.numel(), dtype=gx.dtype).view_as(gx).contiguous(memory_format=torch.channels_last)
        ggy, ggx = torch.autograd.grad((gx * w).sum(), (gy, x), allow_unused=True)
        # d(sum(w * gx))/d(gy) = w * scale * (1 if z >= 0 else slope), by hand
        np.testing.assert_allclose(ggy.detach().numpy(), w.numpy() * mask, rtol=1e-14)
        # second order w.r.t. x is zero (piecewise linear); the compiled path does not even record a dependency
        assert ggx is None or torch.count_nonzero(ggx) == 0


@pytest.mark.parametrize("shape", [(2, 3, 16, 17), (3, 2, 300)])  # planes >= 128 elements: the per-plane kernels
def test_fused_leaky_relu_large_planes_values_and_gradients(impl, shape):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(*shape, dtype=torch.float64, generator=g)
    bias = torch.randn(shape[1], dtype=torch.float64, generator=g)
    gy = torch.randn(*shape, dtype=torch.float64, generator=g)
    z = base.numpy() + bias.numpy().reshape([1, -1] + [1] * (len(shape) - 2))
    axes = (0,) + tuple(range(2, len(shape)))
    for slope, scale in [(0.2, math.sqrt(2)), (-0.3, 0.7)]:  # output-based and mask-based backward
        x = base.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True)
        y = pdfgc_ops.fused_leaky_relu(x, b, slope, scale, impl=impl)
        np.testing.assert_allclose(y.detach().numpy(), act_oracle(base.numpy(), bias.numpy(), slope, scale),
                                   rtol=1e-14, atol=1e-14)
        y.backward(gy)
        dz = gy.numpy() * np.where(z >= 0, scale, scale * slope)
        np.testing.assert_allclose(x.grad.numpy(), dz, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(b.grad.numpy(), dz.sum(axis=axes), rtol=1e-12, atol=1e-12)
