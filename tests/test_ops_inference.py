"""The two inference-only fused ops (pdfgc_ops.scale_shift_relu, pdfgc_ops.cat_add) against numpy and torch.nn
oracles, in every layout; their dispatch (forward-only kernels: autograd always gets the reference); and the FAN
motion encoder built on them against the plain BatchNorm/ReLU/cat formulation."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pdfgc_ops
from pdfgc_ops import _ext

HAVE_CXX = shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.fixture(params=["ref", pytest.param("cpu", marks=pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler"))])
def impl(request):
    if request.param == "cpu":
        try:
            _ext.get("pdfgc_inference")
        except _ext.ExtensionBuildError as exc:
            pytest.fail(f"C++ extension did not build: {exc}")
    return request.param


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same values as dense NCHW, channels_last, and a non-dense view (a slice of a wider tensor)."""
    wide = torch.cat([x, torch.full_like(x[..., :1], 99.0)], dim=-1)
    return {"nchw": x.contiguous(), "channels_last": x.contiguous(memory_format=torch.channels_last),
            "strided": wide[..., :-1]}


# ------------------------------------------------------------------------------------------------ scale_shift_relu

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 64, 30, 30), (3, 1, 1, 1), (2, 300, 2, 2)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_scale_shift_relu_matches_numpy(impl, dtype, shape, layout):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    s = torch.randn(shape[1], generator=g, dtype=torch.float64)  # negative scales flip which side is clipped
    b = torch.randn(shape[1], generator=g, dtype=torch.float64)
    want = np.maximum(x.numpy() * s.numpy()[None, :, None, None] + b.numpy()[None, :, None, None], 0.0)
    xin = _layouts(x.to(dtype))[layout]
    with torch.no_grad():
        y = pdfgc_ops.scale_shift_relu(xin, s.to(dtype), b.to(dtype), impl=impl)
    assert y.shape == x.shape and y.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(y.double().numpy(), want, rtol=tol, atol=tol)
    if layout == "channels_last" and impl == "cpu":
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_scale_shift_relu_two_dims_and_hand_values(impl):
    x = torch.tensor([[1.0, -2.0, 3.0], [-1.0, 0.5, 0.0]])
    s = torch.tensor([2.0, -1.0, 0.5])
    b = torch.tensor([-1.0, 1.0, -2.0])
    # by hand: [[2-1, 2+1, 1.5-2], [-2-1, -0.5+1, 0-2]] -> relu
    with torch.no_grad():
        y = pdfgc_ops.scale_shift_relu(x, s, b, impl=impl)
    assert y.tolist() == [[1.0, 3.0, 0.0], [0.0, 0.5, 0.0]]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_scale_shift_relu_is_eval_batchnorm_then_relu(impl, layout):
    bn = torch.nn.BatchNorm2d(6, eps=1e-3).double().eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(6, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(6, generator=g, dtype=torch.float64) + 0.1)
        bn.weight.copy_(torch.randn(6, generator=g, dtype=torch.float64))
        bn.bias.copy_(torch.randn(6, generator=g, dtype=torch.float64))
        x = _layouts(torch.randn(3, 6, 5, 4, generator=g, dtype=torch.float64))[layout]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        got = pdfgc_ops.scale_shift_relu(x, scale, bn.bias - bn.running_mean * scale, impl=impl)
        torch.testing.assert_close(got, F.relu(bn(x)), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------- cat_add

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("split", [(4, 2, 2), (3, 1, 1, 3), (8,)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "mixed"])
def test_cat_add_matches_numpy(impl, dtype, split, layout):
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(2, c, 6, 5, generator=g, dtype=torch.float64) for c in split]
    res = torch.randn(2, sum(split), 6, 5, generator=g, dtype=torch.float64)
    want = np.concatenate([p.numpy() for p in parts], axis=1) + res.numpy()
    if layout == "mixed":  # parts in one layout, the residual in the other
        pin = [p.to(dtype).contiguous() for p in parts]
        rin = res.to(dtype).contiguous(memory_format=torch.channels_last)
    else:
        pin = [_layouts(p.to(dtype))[layout] for p in parts]
        rin = _layouts(res.to(dtype))[layout]
    with torch.no_grad():
        y = pdfgc_ops.cat_add(pin, rin, impl=impl)
    assert y.shape == res.shape and y.dtype == dtype
    np.testing.assert_allclose(y.double().numpy(), want, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=1e-6)
    if layout in ("channels_last", "mixed") and impl == "cpu":
        assert y.is_contiguous(memory_format=torch.channels_last)  # the residual's layout


def test_cat_add_mixed_dtypes_take_the_reference_in_auto(fresh):
    res = torch.zeros(1, 3, 2, 2)
    parts = [torch.ones(1, 1, 2, 2, dtype=torch.float64), torch.ones(1, 2, 2, 2)]
    with torch.no_grad():
        y = pdfgc_ops.cat_add(parts, res)
    assert y.dtype == torch.float64 and torch.equal(y, torch.ones(1, 3, 2, 2, dtype=torch.float64))
    assert _ran("cat_add") == "ref"


def test_cat_add_two_dims(impl):
    res = torch.arange(10.0).reshape(2, 5)
    parts = [torch.ones(2, 2), -torch.ones(2, 3)]
    with torch.no_grad():
        y = pdfgc_ops.cat_add(parts, res, impl=impl)
    assert y.tolist() == [[1.0, 2.0, 1.0, 2.0, 3.0], [6.0, 7.0, 6.0, 7.0, 8.0]]


def test_cat_add_and_scale_shift_relu_shape_errors():
    r = torch.zeros(2, 4, 3, 3)
    with pytest.raises(ValueError, match="do not concatenate along axis 1"):
        pdfgc_ops.cat_add([torch.zeros(2, 2, 3, 3), torch.zeros(2, 1, 3, 3)], r)  # 3 channels, not 4
    with pytest.raises(ValueError, match="do not concatenate along axis 1"):
        pdfgc_ops.cat_add([torch.zeros(2, 4, 3, 2)], r)
    with pytest.raises(ValueError, match="at least one part"):
        pdfgc_ops.cat_add([], r)
    with pytest.raises(ValueError, match="one value per channel"):
        pdfgc_ops.scale_shift_relu(r, torch.ones(3), torch.zeros(4))


# --------------------------------------------------------------------------------------------------------- dispatch

@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(pdfgc_ops, "_running", {op: {} for op in pdfgc_ops._running})
    monkeypatch.delenv("PDFGC_OPS_IMPL", raising=False)
    return monkeypatch


def _ran(op: str) -> str:
    return pdfgc_ops.backend_info()["running"][op]["cpu"]


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler")
def test_auto_takes_the_kernel_only_without_autograd(fresh):
    x = torch.randn(2, 3, 4, 4)
    s, b = torch.rand(3), torch.randn(3)
    with torch.no_grad():
        pdfgc_ops.scale_shift_relu(x, s, b)
    assert _ran("scale_shift_relu") == "cpu"
    with torch.inference_mode():
        pdfgc_ops.cat_add([x[:, :1], x[:, 1:]], x)
    assert _ran("cat_add") == "cpu"
    pdfgc_ops.scale_shift_relu(x.bfloat16(), s, b)  # no bf16 kernel
    assert _ran("scale_shift_relu") == "ref"
    # a graph is needed: the reference runs, and its gradient is the analytic one
    xg = x.clone().requires_grad_(True)
    sg = s.clone().requires_grad_(True)
    y = pdfgc_ops.scale_shift_relu(xg, sg, b)
    assert _ran("scale_shift_relu") == "ref"
    y.sum().backward()
    on = (x * s[None, :, None, None] + b[None, :, None, None] > 0).float()
    torch.testing.assert_close(xg.grad, on * s[None, :, None, None])
    torch.testing.assert_close(sg.grad, (on * x).sum(dim=(0, 2, 3)))
    pg = x[:, :1].clone().requires_grad_(True)
    pdfgc_ops.cat_add([pg, x[:, 1:]], x).sum().backward()
    assert _ran("cat_add") == "ref" and torch.equal(pg.grad, torch.ones_like(pg))


def test_explicit_requests_fail_loudly_environment_falls_back(fresh):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    s, b = torch.ones(3), torch.zeros(3)
    with pytest.raises(ValueError, match="forward-only"):
        pdfgc_ops.scale_shift_relu(x, s, b, impl="cpu")
    with pytest.raises(ValueError, match="no CUDA kernel"):
        pdfgc_ops.cat_add([x], x.detach(), impl="cuda")
    # a process-wide preference is a default, not a demand: training code that needs a graph still runs
    for env in ("cpu", "cuda"):
        fresh.setenv("PDFGC_OPS_IMPL", env)
        y = pdfgc_ops.scale_shift_relu(x, s, b)
        assert _ran("scale_shift_relu") == "ref" and y.requires_grad
    fresh.setenv("PDFGC_OPS_IMPL", "ref")
    with torch.no_grad():
        pdfgc_ops.cat_add([x[:, :1], x[:, 1:]], x)
    assert _ran("cat_add") == "ref"


# ----------------------------------------------------------------------------------- the FAN motion encoder on them

def _plain_forward(monkeypatch):
    """Make the motion encoder use the textbook formulation: relu(bn(x)) and torch.cat(...) + res."""
    from pdfgc.models import motion

    monkeypatch.setattr(motion, "bn_relu", lambda bn, x: F.relu(bn(x)))
    monkeypatch.setattr(motion.pdfgc_ops, "cat_add", lambda parts, res: torch.cat(list(parts), 1) + res)


def _randomized_motion_encoder():
    from pdfgc.models.bundle import build_component, load_model_config

    enc = build_component(load_model_config("tiny")["motion"]).double()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, some negative gains
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
                m.bias.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.2)
    return enc


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_motion_encoder_fused_inference_equals_plain_formulation(layout, monkeypatch):
    enc = _randomized_motion_encoder().eval()
    s = enc.config["image_size"]
    x = _layouts(torch.rand(3, 3, s, s, dtype=torch.float64) * 2 - 1)[layout]
    with torch.inference_mode():
        fused = enc(x)
    assert pdfgc_ops.backend_info()["running"]["cat_add"]["cpu"] == ("cpu" if HAVE_CXX else "ref")
    with monkeypatch.context() as mp:
        _plain_forward(mp)
        with torch.inference_mode():
            plain = enc(x)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_motion_encoder_training_mode_and_gradients_unchanged(monkeypatch):
    """Training mode normalises with batch statistics; with autograd on, gradients equal the plain formulation's."""
    enc = _randomized_motion_encoder().train()
    s = enc.config["image_size"]
    x = torch.rand(4, 3, s, s, dtype=torch.float64) * 2 - 1

    def run(e):
        torch.manual_seed(5)  # the same Dropout masks in both runs
        e.zero_grad()
        xin = x.clone().requires_grad_(True)
        out = e(xin)
        sum(o.square().sum() for o in out).backward()
        return [o.detach() for o in out], xin.grad, e.model.conv2.conv1.weight.grad.clone()

    import copy

    plain_enc = copy.deepcopy(enc)
    got = run(enc)
    with monkeypatch.context() as mp:
        _plain_forward(mp)
        want = run(plain_enc)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[2], want[2], rtol=1e-9, atol=1e-12)
    # the same in eval mode with autograd on (frozen encoder, gradient to the input: the reference path)
    enc.eval(), plain_enc.eval()
    got = run(enc)
    with monkeypatch.context() as mp:
        _plain_forward(mp)
        want = run(plain_enc)
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-12)
