"""Forward numerics of the networks against naive oracles written from SPEC 2-3 (the audit of the official
inference code's operation order, normalisations, reshapes, paddings, resampling and latent indexing).

Each oracle reads only the module's state_dict and recomputes the forward pass with elementary tensor operations
(BatchNorm written out, max-pool by reshaping, bilinear resampling by explicit gathers, transposed convolution as
zero insertion + full padding + flipped kernel, per-sample modulated kernels), so a wrong op order (ReLU/BN),
axis, padding, resampling mode or latent slot in the modules makes these tests fail. Weights, BN statistics and
noise strengths are randomised first so that every op matters; float64 keeps tolerances tight.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from pdfgc import constants as C
from pdfgc.models import build_component, load_model_config
from pdfgc.models.generator import Generator
from pdfgc.models.layers import ModulatedConv2d

BN_EPS = 1e-5  # torch default, used by every BatchNorm of the reference


def _randomize(module: torch.nn.Module, seed: int) -> dict:
    """float64, eval mode, every float tensor perturbed (BN running stats positive-variance); returns the
    state_dict the oracles read."""
    module.double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point() or name.endswith(".kernel"):
                continue  # FIR taps are architecture, not weights
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            else:
                t.add_(0.2 * torch.randn(t.shape, generator=g, dtype=t.dtype))
    return dict(module.state_dict())


# ----------------------------------------------------------------------------------------- elementary oracles
def _bn(x, P, k):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m, v = P[k + ".running_mean"].view(shape), P[k + ".running_var"].view(shape)
    return (x - m) / torch.sqrt(v + BN_EPS) * P[k + ".weight"].view(shape) + P[k + ".bias"].view(shape)


def _conv(x, P, k, stride=1, padding=0, groups=1):
    return F.conv2d(x, P[k + ".weight"], P.get(k + ".bias"), stride=stride, padding=padding, groups=groups)


def _lin(x, P, k):
    return x @ P[k + ".weight"].t() + P[k + ".bias"]


def _relu(x):
    return x.clamp(min=0)


def _maxpool2(x):
    """2x2/2 max-pool, floor mode."""
    b, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, :, :2 * h2, :2 * w2].reshape(b, c, h2, 2, w2, 2).amax(dim=(3, 5))


def _bilinear_half_pixel(x, size):
    """Bilinear resampling with half-pixel centres (align_corners=False) to `size`, written as gathers."""

    def taps(n_in, n_out):
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0, i1, (src - i0).to(x.dtype)

    r0, r1, lr = taps(x.shape[-2], size[0])
    c0, c1, lc = taps(x.shape[-1], size[1])
    y = x[:, :, r0, :] * (1 - lr)[:, None] + x[:, :, r1, :] * lr[:, None]
    return y[:, :, :, c0] * (1 - lc) + y[:, :, :, c1] * lc


# ------------------------------------------------------------------------------------------------ audio (2.3)
def _audio_oracle(P, mel, layers):
    """ResNetSE34-V2 + SAP + fc + mouth_embed, SPEC 2.3."""
    x = _bn(_relu(_conv(mel, P, "model.conv1", padding=1)), P, "model.bn1")  # ReLU *before* BN
    for li, n in enumerate(layers, start=1):
        for bi in range(n):
            k = f"model.layer{li}.{bi}"
            stride = 2 if (li > 1 and bi == 0) else 1
            out = _bn(_relu(_conv(x, P, k + ".conv1", stride, 1)), P, k + ".bn1")
            out = _bn(_conv(out, P, k + ".conv2", 1, 1), P, k + ".bn2")
            z = torch.sigmoid(_lin(_relu(_lin(out.mean(dim=(2, 3)), P, k + ".se.fc.0")), P, k + ".se.fc.2"))
            out = out * z[:, :, None, None]
            if k + ".downsample.0.weight" in P:
                sc = _bn(_conv(x, P, k + ".downsample.0", stride), P, k + ".downsample.1")
            else:
                sc = x
            x = _relu(out + sc)
    b, ch, fq, t = x.shape
    # (B, C, F, T) -> (B, C*F, T) with row index c*F + f (channel-major), built element by element
    seq = torch.stack([x[:, c, f, :] for c in range(ch) for f in range(fq)], dim=1)
    h = torch.einsum("oi,bit->bot", P["model.attention.0.weight"][:, :, 0], seq) + P["model.attention.0.bias"][:, None]
    h = _bn(_relu(h), P, "model.attention.2")
    a = torch.einsum("oi,bit->bot", P["model.attention.3.weight"][:, :, 0], h) + P["model.attention.3.bias"][:, None]
    e = torch.exp(a - a.amax(dim=2, keepdim=True))
    w = e / e.sum(dim=2, keepdim=True)  # softmax over time
    f_aud = _lin((seq * w).sum(dim=2), P, "model.fc")
    return f_aud, _lin(_relu(f_aud), P, "mouth_embed.1")


@pytest.mark.parametrize("config", ["tiny", "pdfgc"])
def test_audio_encoder_equals_spec_oracle(config):
    cfg = load_model_config(config)["audio"]
    enc = build_component(cfg)
    P = _randomize(enc, seed=1)
    mel = torch.rand(3, 1, C.N_MELS, C.MEL_WINDOW, dtype=torch.float64)
    with torch.no_grad():
        f_aud, lip = enc(mel)
    ref_f, ref_lip = _audio_oracle(P, mel, cfg["layers"])
    if config == "pdfgc":  # the released shapes: layer4 map (B,256,10,3) -> (B,2560,3)
        assert P["model.attention.0.weight"].shape == (128, 2560, 1)
    assert f_aud.shape == (3, cfg["embed_dim"]) and lip.shape == (3, C.LIP_DIM)
    torch.testing.assert_close(f_aud, ref_f, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lip, ref_lip, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------- motion (2.2)
def _convblock(x, P, k):
    o1 = _conv(_relu(_bn(x, P, k + ".bn1")), P, k + ".conv1", padding=1)
    o2 = _conv(_relu(_bn(o1, P, k + ".bn2")), P, k + ".conv2", padding=1)
    o3 = _conv(_relu(_bn(o2, P, k + ".bn3")), P, k + ".conv3", padding=1)
    if k + ".downsample.0.weight" in P:
        res = _conv(_relu(_bn(x, P, k + ".downsample.0")), P, k + ".downsample.2")
    else:
        res = x
    return torch.cat([o1, o2, o3], dim=1) + res


def _hourglass(x, P, level):
    k = "model.m0"
    up1 = _convblock(x, P, f"{k}.b1_{level}")  # (Dropout is inert in eval)
    low = _convblock(_maxpool2(x), P, f"{k}.b2_{level}")
    low = _hourglass(low, P, level - 1) if level > 1 else _convblock(low, P, f"{k}.b2_plus_1")
    low = _convblock(low, P, f"{k}.b3_{level}")
    return up1 + _bilinear_half_pixel(low, up1.shape[-2:])


def _motion_oracle(P, x, depth, stem_stride=2):
    """FAN_use + the four heads, SPEC 2.2; returns (pose, eye, emo, mouth_feat, lip)."""
    h = _relu(_bn(_conv(x, P, "model.conv1", stride=stem_stride, padding=3), P, "model.bn1"))
    h = _maxpool2(_convblock(h, P, "model.conv2"))
    h = _convblock(_convblock(h, P, "model.conv3"), P, "model.conv4")
    h = _convblock(_hourglass(h, P, depth), P, "model.top_m_0")
    h = _bn(_conv(h, P, "model.conv_last0"), P, "model.bn_end0")
    h = _conv(_relu(h), P, "model.l0")  # 68 landmark heatmaps
    h = _conv(_relu(_bn(h, P, "model.bn5")), P, "model.conv6", stride=2, padding=1)  # (B,1,S/8,S/8)
    f = _lin(_relu(h.reshape(h.shape[0], -1)), P, "model.fc")

    def trunk(name):  # Linear -> ReLU -> BatchNorm1d -> Linear
        return _lin(_bn(_relu(_lin(f, P, name + ".0")), P, name + ".2"), P, name + ".3")

    def embed(feat, name):  # ReLU -> Linear
        return _lin(_relu(feat), P, name + ".1")

    mouth = trunk("to_mouth")
    return (embed(trunk("to_headpose"), "headpose_embed"), embed(trunk("to_eye"), "eye_embed"),
            embed(trunk("to_emo"), "emo_embed"), mouth, embed(mouth, "mouth_embed"))


@pytest.mark.parametrize("config", ["tiny", "pdfgc", "tiny_stem_stride_1"])
def test_motion_encoder_equals_spec_oracle(config):
    cfg = dict(load_model_config(config.replace("_stem_stride_1", ""))["motion"])
    if config.endswith("_stem_stride_1"):  # the small-crop knob: trunk at S/2 instead of S/4 (fc sees (S/4)^2)
        cfg["stem_stride"] = 1
    enc = build_component(cfg)
    P = _randomize(enc, seed=2)
    s = cfg["image_size"]
    b = 2 if config == "tiny" else 1
    x = torch.rand(b, 3, s, s, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        got = enc(x)
        lip = enc.encode(x, heads=("lip",))["lip"]
    ref = _motion_oracle(P, x, cfg["hourglass_depth"], cfg.get("stem_stride", 2))
    if config == "pdfgc":  # 224 -> hourglass 56 -> 28 -> 14 -> 7 -> 3 (floor) and back; conv6 map 28x28 -> fc 784
        assert P["model.fc.weight"].shape == (512, 28 * 28)
    if config.endswith("_stem_stride_1"):
        assert P["model.fc.weight"].shape[1] == (s // 4) ** 2
    for a, r in zip(list(got) + [lip], ref):
        assert a.shape == r.shape
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-9)


def test_hourglass_upsampling_is_half_pixel_bilinear_not_align_corners():
    """The oracle's resampler is the one the reference uses (align_corners=False): it differs from
    align_corners=True on the 3 -> 7 step of the released hourglass, so the motion test can tell them apart."""
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    ours = _bilinear_half_pixel(x, (7, 7))
    torch.testing.assert_close(ours, F.interpolate(x, size=(7, 7), mode="bilinear", align_corners=False))
    assert (ours - F.interpolate(x, size=(7, 7), mode="bilinear", align_corners=True)).abs().max() > 1e-2
    # a hand-computed value: output row 1 of 7 from 3 rows sits at source (1.5 * 3/7 - 0.5) = 1/7 -> 6/7 x0 + 1/7 x1
    col = torch.tensor([[[[0.0], [7.0], [14.0]]]], dtype=torch.float64)
    assert _bilinear_half_pixel(col, (7, 1))[0, 0, :, 0].tolist() == pytest.approx([0, 1, 4, 7, 10, 13, 14])


# -------------------------------------------------------------------------------------------- generator (2.5)
def _fir_up2(x, taps=(1.0, 3.0, 3.0, 1.0)):
    """ToRGB skip upsampling: zero insertion (sample at the top-left of each 2x2 cell), pad (2,1), true
    convolution with outer(taps,taps)/sum^2 * 4."""
    b, c, h, w = x.shape
    z = torch.zeros(b, c, 2 * h, 2 * w, dtype=x.dtype)
    z[:, :, ::2, ::2] = x
    t = torch.tensor(taps, dtype=x.dtype)
    k = torch.outer(t, t) / t.sum() ** 2 * 4
    return F.conv2d(F.pad(z, (2, 1, 2, 1)), k.flip(0, 1).expand(c, 1, 4, 4).contiguous(), groups=c)


def _modconv(x, P, k, w, demodulate, upsample):
    """Per-sample modulated convolution (SPEC 2.5), transposed conv written as zero insertion + full pad."""
    weight = P[k + ".weight"][0]  # (out, in, kh, kw)
    out_c, in_c, ks, _ = weight.shape
    mod_w = P[k + ".modulation.weight"]
    s = w @ (mod_w / math.sqrt(mod_w.shape[1])).t() + P[k + ".modulation.bias"]  # lr_mul 1
    outs = []
    for b in range(x.shape[0]):
        wb = weight * s[b].view(1, in_c, 1, 1) / math.sqrt(in_c * ks * ks)
        if demodulate:
            wb = wb / torch.sqrt((wb ** 2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        xb = x[b:b + 1]
        if upsample:
            h, wd = xb.shape[-2:]
            z = torch.zeros(1, in_c, 2 * h - 1, 2 * wd - 1, dtype=x.dtype)
            z[:, :, ::2, ::2] = xb
            y = F.conv2d(F.pad(z, (ks - 1,) * 4), wb.flip(2, 3))  # = transposed conv, stride 2: (2H+1)
            t = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype)
            kern = torch.outer(t, t) / 64 * 4
            y = F.conv2d(F.pad(y, (1, 1, 1, 1)), kern.flip(0, 1).expand(out_c, 1, 4, 4).contiguous(), groups=out_c)
        else:
            y = F.conv2d(xb, wb, padding=ks // 2)
        outs.append(y)
    return torch.cat(outs)


def _generator_oracle(P, latent, spatial, n_blocks):
    """Synthesis with per-slot styles latent (B, n_latent, D) and the checkpoint noise buffers (SPEC 2.5):
    slot 0 -> conv1, 1 -> to_rgb1, then per block j: convs[2j] <- 1+2j, convs[2j+1] <- 2+2j, to_rgbs[j] <- 3+2j."""

    def styled(x, k, slot, noise_idx, up):
        y = _modconv(x, P, k + ".conv", latent[:, slot], True, up)
        y = y + P[k + ".noise.weight"] * P[f"noises.noise_{noise_idx}"]
        y = y + P[k + ".activate.bias"]
        return torch.where(y >= 0, y, 0.2 * y) * math.sqrt(2)

    def to_rgb(x, k, slot, skip):
        y = _modconv(x, P, k + ".conv", latent[:, slot], False, False) + P[k + ".bias"]
        return y if skip is None else y + _fir_up2(skip)

    out = styled(spatial, "conv1", 0, 0, False)
    skip = to_rgb(out, "to_rgb1", 1, None)
    for j in range(n_blocks):
        out = styled(out, f"convs.{2 * j}", 1 + 2 * j, 1 + 2 * j, True)
        out = styled(out, f"convs.{2 * j + 1}", 2 + 2 * j, 2 + 2 * j, False)
        skip = to_rgb(out, f"to_rgbs.{j}", 3 + 2 * j, skip)
    return torch.tanh(skip)


@pytest.mark.parametrize("conv_impl", ["fused", "grouped"])
def test_generator_equals_spec_oracle_with_per_slot_styles(conv_impl):
    # 7 -> 14 -> 28 -> 56 with channels 8, 8, 4, 2: channel changes on the upsampling convs are covered
    g = Generator(image_size=56, style_dim=12, channel_multiplier=1, channel_base=2, channel_max=8,
                  conv_impl=conv_impl)
    assert g.channels == {7: 8, 14: 8, 28: 4, 56: 2}
    P = _randomize(g, seed=4)
    gen = torch.Generator().manual_seed(5)
    latent = torch.randn(2, g.n_latent, 12, generator=gen, dtype=torch.float64)  # a different style per slot
    spatial = torch.randn(2, 8, 7, 7, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        img = g(latent, spatial, noise_mode="const")
        one = g(latent[:, 0], spatial, noise_mode="const")  # a single style is broadcast to every slot
    ref = _generator_oracle(P, latent, spatial, n_blocks=3)
    assert g.n_latent == 8 and img.shape == (2, 3, 56, 56)
    torch.testing.assert_close(img, ref, rtol=1e-9, atol=1e-10)
    ref_one = _generator_oracle(P, latent[:, :1].expand(-1, g.n_latent, -1), spatial, n_blocks=3)
    torch.testing.assert_close(one, ref_one, rtol=1e-9, atol=1e-10)
    assert (img - one).abs().max() > 1e-3  # the slots matter, so a wrong slot mapping would have failed above


def test_cached_noise_maps_are_drawn_like_the_reference():
    """SPEC 1.10: without an explicit generator, each StyledConv draws one (1,1,H,W) standard-normal map from the
    default generator of the activation's device on its first forward, in layer order (conv1, convs.0, ...),
    and nothing else in the forward consumes that generator. Expectation: the same sequence of normal_ draws."""
    g = Generator(image_size=56, style_dim=6, channel_multiplier=1, channel_base=2, channel_max=4).eval()
    style, spatial = torch.randn(2, 6), torch.randn(2, 4, 7, 7)
    torch.manual_seed(20202001)
    with torch.no_grad():
        g(style, spatial)
    torch.manual_seed(20202001)
    sizes = [7, 14, 14, 28, 28, 56, 56]
    expected = [torch.empty(1, 1, r, r).normal_() for r in sizes]
    got = [n.noise for n in g.noise_layers()]
    assert [tuple(t.shape) for t in got] == [(1, 1, r, r) for r in sizes]
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.cuda
def test_cached_noise_maps_on_cuda_follow_the_cuda_generator_like_the_reference():
    """The reference draws its maps on the GPU (`image.new_empty(1,1,H,W).normal_()` after
    torch.manual_seed(20202001)); the same seed must give the same maps here."""
    g = Generator(image_size=56, style_dim=6, channel_multiplier=1, channel_base=2, channel_max=4).cuda().eval()
    style, spatial = torch.randn(2, 6, device="cuda"), torch.randn(2, 4, 7, 7, device="cuda")
    torch.manual_seed(20202001)
    with torch.no_grad():
        g(style, spatial)
    torch.manual_seed(20202001)
    expected = [torch.empty(1, 1, r, r, device="cuda").normal_() for r in [7, 14, 14, 28, 28, 56, 56]]
    for n, e in zip(g.noise_layers(), expected):
        assert n.noise.device.type == "cuda"
        torch.testing.assert_close(n.noise, e, rtol=0, atol=0)


def test_equal_linear_and_modulation_init():
    """EqualLinear: weight ~ N(0,1)/lr_mul, runtime scale lr_mul/sqrt(in), bias*lr_mul; modulation bias init 1."""
    from pdfgc.models.layers import EqualLinear

    torch.manual_seed(0)
    lin = EqualLinear(400, 300, lr_mul=0.01, bias_init=0.5)
    assert 95 < lin.weight.std().item() < 105  # N(0,1) / 0.01
    x = torch.randn(3, 400)
    ref = x @ (lin.weight * 0.01 / 20.0).t() + lin.bias * 0.01
    torch.testing.assert_close(lin(x), ref)
    act = EqualLinear(400, 300, lr_mul=0.01, activation="fused_lrelu")
    with torch.no_grad():
        act.bias.normal_()
    y = x @ (act.weight * 0.01 / 20.0).t() + act.bias * 0.01
    torch.testing.assert_close(act(x), torch.where(y >= 0, y, 0.2 * y) * math.sqrt(2), rtol=1e-5, atol=1e-6)
    conv = ModulatedConv2d(5, 4, 3, style_dim=7)
    assert torch.equal(conv.modulation.bias, torch.ones(5))


# ------------------------------------------------------------------------------------------- discriminator (2.7)
def test_discriminator_matches_reference_layout():
    """Reference (pix2pixHD/SPADE `spectralinstance`): the hidden convs lose their bias (it would be cancelled by
    the non-affine InstanceNorm). Hand count for ndf 64, 4 layers: 3*64*16+64, 64*128*16, 128*256*16, 256*512*16,
    512*16+1 per scale."""
    cfg = load_model_config("pdfgc")["discriminator"]
    with torch.device("meta"):
        d = build_component(cfg)
    per_scale = (3 * 64 * 16 + 64) + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16 + (512 * 16 + 1)
    assert sum(p.numel() for p in d.parameters()) == 2 * per_scale
    hidden = [m for n, m in d.named_modules() if isinstance(m, torch.nn.Conv2d) and hasattr(m, "weight_orig")]
    assert len(hidden) == 6 and all(m.bias is None for m in hidden)


def test_discriminator_include_input_lists_each_scale_input_first():
    cfg = {**load_model_config("tiny")["discriminator"], "include_input": True}
    d = build_component(cfg).double().eval()
    x = torch.randn(2, 3, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        out = d(x)
        plain = build_component({**cfg, "include_input": False}).double()
        plain.load_state_dict(d.state_dict())
        out_plain = plain.eval()(x)
    assert [len(s) for s in out] == [cfg["n_layers"] + 2] * cfg["num_D"]
    assert torch.equal(out[0][0], x)
    # scale 2 input: 3x3/2 average pooling, padding 1, padded cells not counted (naive loop oracle)
    ref = torch.zeros(2, 3, 10, 10, dtype=torch.float64)
    for i in range(10):
        for j in range(10):
            r0, r1, c0, c1 = max(2 * i - 1, 0), min(2 * i + 2, 20), max(2 * j - 1, 0), min(2 * j + 2, 20)
            ref[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(dim=(2, 3))
    torch.testing.assert_close(out[1][0], ref)
    for s, sp in zip(out, out_plain):  # the remaining entries are the plain layout's
        assert len(s) == len(sp) + 1 and all(torch.equal(a, b) for a, b in zip(s[1:], sp))
