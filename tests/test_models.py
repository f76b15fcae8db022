"""Networks: full-size key/shape compatibility with the released checkpoints (meta device, no allocation),
configs, modulated-convolution math against an independent per-sample oracle, generator sizes/range/noise,
encoders against independent expectations, style assembly and control masks (SPEC 1.7-1.8, 2)."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pdfgc import constants as C
from pdfgc.models import PDFGCModels, apply_controls, assemble_style, build_component, eye_mask, load_model_config
from pdfgc.models.generator import Generator, channel_table
from pdfgc.models.layers import ModulatedConv2d

MANIFEST = Path("/work/shared/official/manifest.json")
FILES = {"appearance": "appearance_model.pth", "motion": "motion_model.pth", "audio": "audio_model.pth",
         "generator": "generator_model.pth"}


def _manifest():
    if not MANIFEST.is_file():
        pytest.skip(f"{MANIFEST} not present (reference manifest of the released checkpoints)")
    return json.loads(MANIFEST.read_text())


@pytest.mark.parametrize("component", list(FILES))
def test_full_size_state_dict_matches_released_manifest(component):
    entry = _manifest()[FILES[component]]
    cfg = load_model_config("pdfgc")
    with torch.device("meta"):
        module = build_component(cfg[component])
    got = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in module.state_dict().items()]
    assert got == entry["keys"]  # same keys, same order, same shapes and dtypes
    assert len(got) == entry["num_keys"]
    # num_params counts nn.Parameters (BN statistics, num_batches_tracked, FIR kernels and noise maps excluded)
    assert sum(p.numel() for p in module.parameters()) == entry["num_params"]


def _flat_keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _flat_keys(v, prefix + k + ".")
    return out


def test_tiny_and_pdfgc_configs_have_same_keys_and_consistent_dims():
    full, tiny = load_model_config("pdfgc"), load_model_config("tiny")
    assert _flat_keys(full) == _flat_keys(tiny)
    assert full["image_size"] == C.IMAGE_SIZE and tiny["image_size"] == 56
    # released dims come from pdfgc.constants
    assert full["generator"]["style_dim"] == C.STYLE_DIM
    assert full["generator0"]["style_dim"] == C.APP_DIM + C.UNIFIED_MOTION_DIM
    assert full["motion"]["feature_dim"] == C.UNIFIED_MOTION_DIM
    for cfg in (full, tiny):
        m = cfg["motion"]
        assert (m["lip_dim"], m["emo_dim"], m["eye_dim"], m["pose_dim"]) == (C.LIP_DIM, C.EMO_DIM, C.EYE_DIM,
                                                                             C.POSE_DIM)
        assert cfg["audio"]["lip_dim"] == C.LIP_DIM
        app_dim = 32 * cfg["appearance"]["base_planes"]
        assert cfg["generator"]["style_dim"] == app_dim + C.MOTION_DIM
        assert cfg["generator0"]["style_dim"] == app_dim + m["feature_dim"]
        assert cfg["appearance"]["spatial_dim"] == cfg["generator"]["channel_max"]
    PDFGCModels.from_config("tiny")  # the bundle's own consistency checks accept the tiny config


def test_generator_channel_table_is_the_reference_table():
    assert channel_table(224) == {7: 512, 14: 512, 28: 512, 56: 512, 112: 256, 224: 128}
    assert channel_table(256) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    with pytest.raises(ValueError, match="7\\*2\\^k"):
        Generator(image_size=100, style_dim=8, channel_max=8)


# ------------------------------------------------------------------------ modulated convolution vs oracle
def _oracle_modconv(x, w_param, s, demodulate, upsample, blur_taps=(1, 3, 3, 1)):
    """Per-sample reference: build each sample's kernel explicitly and convolve that sample alone."""
    out_c, in_c, k, _ = w_param.shape
    scale = 1 / math.sqrt(in_c * k * k)
    outs = []
    for b in range(x.shape[0]):
        wb = scale * w_param * s[b].view(1, in_c, 1, 1)
        if demodulate:
            wb = wb / torch.sqrt((wb ** 2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        xb = x[b:b + 1]
        if upsample:
            y = F.conv_transpose2d(xb, wb.transpose(0, 1), stride=2)  # (1,out,2H+1,2W+1)
            t = torch.tensor(blur_taps, dtype=x.dtype)
            kern = torch.outer(t, t) / t.sum() ** 2 * 4  # x4: DC gain after 2x zero insertion
            y = F.pad(y, (1, 1, 1, 1))
            y = F.conv2d(y, kern.flip(0, 1).expand(out_c, 1, 4, 4).contiguous(), groups=out_c)
        else:
            y = F.conv2d(xb, wb, padding=k // 2)
        outs.append(y)
    return torch.cat(outs)


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_shared_weight_path_equals_per_sample_oracle(upsample, demodulate):
    torch.manual_seed(1)
    k = 3 if (upsample or demodulate) else 1
    conv = ModulatedConv2d(5, 4, k, style_dim=7, demodulate=demodulate, upsample=upsample).double()
    with torch.no_grad():
        conv.modulation.bias.normal_()  # styles of both signs
    x = torch.randn(3, 5, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 7, dtype=torch.float64)
    out, s = conv(x, w)
    s_ref = F.linear(w, conv.modulation.weight / math.sqrt(7), conv.modulation.bias)
    torch.testing.assert_close(s, s_ref)
    ref = _oracle_modconv(x, conv.weight[0], s_ref, demodulate, upsample)
    assert out.shape == ((3, 4, 12, 12) if upsample else (3, 4, 6, 6))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    out_g, _ = conv(x, w, impl="grouped")  # the reference's grouped formulation agrees too
    torch.testing.assert_close(out_g, ref, rtol=1e-10, atol=1e-10)


def test_resampling_filters_are_the_reference_ones():
    from pdfgc.models.layers import Upsample

    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k4 = torch.outer(taps, taps) / 64 * 4
    up = Upsample((1, 3, 3, 1))
    assert up.pad == (2, 1) and torch.allclose(up.kernel, k4)  # SPEC 2.5: ToRGB skip, up 2, pad (2,1)
    conv = ModulatedConv2d(2, 2, 3, 4, upsample=True)
    assert conv.blur.pad == (1, 1) and torch.allclose(conv.blur.kernel, k4)
    # oracle for the skip upsampling: zero insertion, pad (2,1), true convolution with the x4 kernel
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    z = torch.zeros(1, 2, 10, 10, dtype=torch.float64)
    z[:, :, ::2, ::2] = x
    ref = F.conv2d(F.pad(z, (2, 1, 2, 1)), k4.double().flip(0, 1).expand(2, 1, 4, 4).contiguous(), groups=2)
    torch.testing.assert_close(up.double()(x), ref)


def _tiny_generator(size, **kw):
    return Generator(image_size=size, style_dim=16, channel_multiplier=1, channel_base=4, channel_max=8, **kw).eval()


@pytest.mark.parametrize("size", [56, 112, 224, 64])
def test_generator_output_size_and_range(size):
    g = _tiny_generator(size).double()  # float64: tanh only reaches +-1 for |x| > 19
    with torch.no_grad():  # keep the RGB sum moderate so that a strict bound is meaningful
        for t in [g.to_rgb1, *g.to_rgbs]:
            t.conv.weight.mul_(0.2)
    s0 = g.start_size
    assert s0 == (7 if size % 7 == 0 else 4)
    style = torch.randn(2, 16, dtype=torch.float64)
    spatial = torch.randn(2, g.spatial_channels, s0, s0, dtype=torch.float64)
    with torch.no_grad():
        img = g(style, spatial)
    assert img.shape == (2, 3, size, size)
    assert torch.isfinite(img).all() and img.abs().max() < 1 and img.std() > 0.05
    assert len(g.convs) == 2 * int(math.log2(size // s0)) and len(g.to_rgbs) == int(math.log2(size // s0))


def test_generator_never_runs_mapping_network():
    g = _tiny_generator(56)
    calls = []
    for mod in g.style.modules():
        mod.register_forward_hook(lambda *a: calls.append(1))
    g(torch.randn(2, 16), torch.randn(2, 8, 7, 7)).sum().backward()
    assert calls == []
    assert all(p.grad is None for p in g.style.parameters())  # not even touched by autograd


def test_generator_spatial_input_shape_checked():
    g = _tiny_generator(56)
    with pytest.raises(ValueError, match="spatial input has shape"):
        g(torch.randn(1, 16), torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match="style_dim=16"):
        g(torch.randn(1, 15), torch.randn(1, 8, 7, 7))
    style, sp = torch.randn(3, 16), torch.randn(1, 8, 7, 7)
    with torch.no_grad():  # a batch-1 appearance code is shared by the batch; per-layer styles accepted
        torch.testing.assert_close(g(style, sp, noise_mode="const"), g(style, sp.expand(3, -1, -1, -1),
                                                                       noise_mode="const"))
        torch.testing.assert_close(g(style[:, None].expand(-1, g.n_latent, -1), sp, noise_mode="const"),
                                   g(style, sp, noise_mode="const"))


def _with_noise_weights(g):
    with torch.no_grad():
        for n in g.noise_layers():
            n.weight.fill_(0.7)
    return g


def test_noise_modes():
    g = _with_noise_weights(_tiny_generator(56))
    style = torch.randn(1, 16).expand(2, 16)
    spatial = torch.randn(1, 8, 7, 7).expand(2, 8, 7, 7)
    with torch.no_grad():
        a = g(style, spatial, rng=torch.Generator().manual_seed(5))
        b = g(style, spatial)  # cached maps are reused across calls
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a[0], a[1], rtol=1e-5, atol=1e-6)  # one map for every batch element (SPEC 1.10)
        g.reset_noise()
        c = g(style, spatial, rng=torch.Generator().manual_seed(5))
        torch.testing.assert_close(a, c, rtol=0, atol=0)  # same seed -> same maps
        g.reset_noise()
        d = g(style, spatial, rng=torch.Generator().manual_seed(6))
        assert (a - d).abs().max() > 1e-3
        none = g(style, spatial, noise_mode="none")
        for i in range(g.num_layers):
            getattr(g.noises, f"noise_{i}").zero_()
        const_zero = g(style, spatial, noise_mode="const")
        torch.testing.assert_close(none, const_zero, rtol=0, atol=0)
        r = g(style, spatial, noise_mode="random")
        assert (r[0] - r[1]).abs().max() > 1e-4  # fresh noise per sample
    assert not any("noise." in k and not k.endswith("weight") for k in g.state_dict())  # cache not saved
    with pytest.raises(ValueError, match="noise_mode"):
        g(style, spatial, noise_mode="fresh")


# ------------------------------------------------------------------------------------------------ encoders
def test_appearance_trunk_equals_torchvision_resnext50():
    torchvision = pytest.importorskip("torchvision")
    cfg = load_model_config("pdfgc")["appearance"]
    enc = build_component(cfg).eval()
    tv = torchvision.models.resnext50_32x4d(weights=None).eval()
    tv.load_state_dict({k[len("model."):]: v for k, v in enc.state_dict().items() if k.startswith("model.")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        f_app, f_sp = enc(x)
        trunk = torch.nn.Sequential(*list(tv.children())[:-2])(x)  # layer4 map
        ref_app = trunk.mean(dim=(2, 3))
        ref_sp = F.adaptive_avg_pool2d(F.conv2d(trunk, enc.conv1x1.weight, enc.conv1x1.bias), 7)
    assert f_app.shape == (1, C.APP_DIM) and f_sp.shape == (1, 512, 7, 7)
    torch.testing.assert_close(f_app, ref_app, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f_sp, ref_sp, rtol=1e-4, atol=1e-5)
    assert enc.classify(f_app).shape == (1, 5995)


def test_appearance_trunk_init_from_local_file(tmp_path):
    cfg = load_model_config("tiny")["appearance"]
    src, dst = build_component(cfg), build_component(cfg)
    sd = {k[len("model."):]: v for k, v in src.state_dict().items() if k.startswith("model.") and "fc." not in k}
    torch.save(sd, tmp_path / "trunk.pth")
    missing = dst.load_trunk_weights(tmp_path / "trunk.pth")
    assert missing == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.model.layer4[0].conv2.weight, src.model.layer4[0].conv2.weight)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        dst.load_trunk_weights(tmp_path / "missing.pth")


def test_tiny_encoders_shapes_and_batch_independence():
    m = PDFGCModels.from_config("tiny").eval()
    x = torch.randn(3, 3, 56, 56)
    mel = torch.rand(3, 1, C.N_MELS, C.MEL_WINDOW)
    with torch.no_grad():
        pose, eye, emo, mouth_feat = m.motion(x)
        assert (pose.shape, eye.shape, emo.shape, mouth_feat.shape) == ((3, 6), (3, 6), (3, 30), (3, 64))
        enc = m.motion.encode(x)
        assert enc["motion"].shape == (3, 64) and enc["lip"].shape == (3, C.LIP_DIM)
        torch.testing.assert_close(enc["pose"], pose)
        # eval mode: each sample is encoded independently of the rest of the batch
        torch.testing.assert_close(m.motion(x[1:2])[0], pose[1:2], rtol=1e-5, atol=1e-6)
        f_aud, lip = m.audio(mel)
        assert f_aud.shape == (3, 64) and lip.shape == (3, C.LIP_DIM)
        torch.testing.assert_close(m.audio(mel[2:3])[1], lip[2:3], rtol=1e-5, atol=1e-6)
        f5, l5 = m.audio(mel.view(1, 3, 1, C.N_MELS, C.MEL_WINDOW))  # (B,K,1,80,20) windows are flattened
        torch.testing.assert_close(l5, lip)
        f_app, f_sp = m.appearance(x)
        img = m.generator(assemble_style(f_app, lip, emo, eye, pose), f_sp)
    assert img.shape == (3, 3, 56, 56)


def test_motion_encoder_rejects_too_deep_hourglass():
    with pytest.raises(ValueError, match="hourglass_depth=4 is too deep for image_size=56"):
        load = load_model_config("tiny")["motion"]
        build_component({**load, "hourglass_depth": 4})


def test_discriminator_structure_and_outputs():
    cfg = load_model_config("tiny")["discriminator"]
    d = build_component(cfg)
    keys = d.state_dict().keys()
    assert any(k.endswith("weight_orig") for k in keys)  # spectral norm on hidden convs
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) and m.affine for m in d.modules())
    out = d(torch.randn(2, 3, 56, 56))
    assert len(out) == cfg["num_D"]
    assert all(len(scale) == cfg["n_layers"] + 1 for scale in out)  # include_input: false (our default layout)
    assert out[0][-1].shape[:2] == (2, 1) and out[1][-1].shape[-1] < out[0][-1].shape[-1]


# --------------------------------------------------------------------------------------- latent / controls
def test_assemble_style_order():
    b = 2
    f_app = torch.full((1, 4), 1.0)
    lip, emo, eye, pose = (torch.full((b, n), v) for n, v in ((C.LIP_DIM, 2.0), (C.EMO_DIM, 3.0), (6, 4.0),
                                                             (6, 5.0)))
    s = assemble_style(f_app, lip, emo, eye, pose)
    assert s.shape == (b, 4 + C.MOTION_DIM)
    expected = torch.cat([torch.full((4,), 1.0), torch.full((500,), 2.0), torch.full((30,), 3.0),
                          torch.full((6,), 4.0), torch.full((6,), 5.0)])
    torch.testing.assert_close(s, expected.expand(b, -1))


def test_control_masks_match_reference_flags():
    # SPEC 1.7: blink off -> eye * (0,0,1,1,0,0); gaze off -> eye * (1,1,0,0,1,1)
    from pdfgc.models.latent import Controls

    assert eye_mask(Controls(gaze=True), 6).tolist() == [0, 0, 1, 1, 0, 0]
    assert eye_mask(Controls(blink=True), 6).tolist() == [1, 1, 0, 0, 1, 1]
    assert eye_mask(Controls(blink=True, gaze=True), 6).tolist() == [1] * 6
    assert eye_mask(Controls(), 6).tolist() == [0] * 6
    lip, emo, eye, pose = torch.ones(2, 500), torch.ones(2, 30), torch.arange(1.0, 7.0).expand(2, 6), torch.ones(2, 6)
    l2, e2, y2, p2 = apply_controls(lip, emo, eye, pose, Controls(mouth=True, gaze=True))
    assert l2.sum() == 1000 and e2.sum() == 0 and p2.sum() == 0 and y2[0].tolist() == [0, 0, 3, 4, 0, 0]
    out = apply_controls(lip, emo, eye, pose, Controls.all())
    assert all(torch.equal(a, b) for a, b in zip(out, (lip, emo, eye, pose)))
    with pytest.raises(ValueError, match="unknown control 'smile'"):
        Controls.parse(["smile"])
    with pytest.raises(TypeError, match="Controls"):  # user strings are parsed once, at the boundary
        apply_controls(lip, emo, eye, pose, ["mouth"])


def test_generator_fused_path_gradients_and_inference_path_match_grouped():
    """Training (autograd) and inference (in-place) paths of the fused implementation give the reference
    grouped formulation's outputs and parameter gradients (float64)."""
    torch.manual_seed(3)
    g = _with_noise_weights(_tiny_generator(28)).double()
    style = torch.randn(2, 16, dtype=torch.float64)
    spatial = torch.randn(2, 8, 7, 7, dtype=torch.float64)

    def run(impl):
        for mod in g.modules():
            if isinstance(mod, ModulatedConv2d):
                mod.impl = impl
        g.zero_grad()
        out = g(style, spatial, noise_mode="const")
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        with torch.no_grad():
            out_ng = g(style, spatial, noise_mode="const")
        return out.detach(), out_ng, {n: p.grad.clone() for n, p in g.named_parameters() if p.grad is not None}

    out_f, ng_f, grads_f = run("fused")
    out_g, ng_g, grads_g = run("grouped")
    torch.testing.assert_close(out_f, out_g, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ng_f, out_g, rtol=1e-9, atol=1e-10)
    assert grads_f.keys() == grads_g.keys() and "conv1.noise.weight" in grads_f
    assert not any(k.startswith("style.") for k in grads_f)
    for k in grads_f:
        torch.testing.assert_close(grads_f[k], grads_g[k], rtol=1e-8, atol=1e-10, msg=k)


def test_constructor_defaults_are_the_released_architecture():
    cfg = load_model_config("pdfgc")
    for name in ("appearance", "motion", "audio", "generator"):
        with torch.device("meta"):
            built = build_component(cfg[name])
            default = type(built)()
        assert default.config == built.config, name


def test_unknown_model_config_name():
    with pytest.raises(FileNotFoundError, match="available names: \\['pdfgc', 'tiny'\\]"):
        load_model_config("huge")


@pytest.mark.cuda
def test_generator_on_cuda_fused_equals_grouped_and_keeps_noise_on_device():
    g = _with_noise_weights(_tiny_generator(56)).cuda()
    style, spatial = torch.randn(4, 16, device="cuda"), torch.randn(4, 8, 7, 7, device="cuda")
    with torch.no_grad():
        a = g(style, spatial)
        assert all(n.noise.device.type == "cuda" for n in g.noise_layers())
        for mod in g.modules():
            if isinstance(mod, ModulatedConv2d):
                mod.impl = "grouped"
        b = g(style, spatial)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_model_config_folder_override(tmp_path, monkeypatch):
    """Installs without the repository's configs/model point PDFGC_MODEL_CONFIG_DIR at a copy (docs/models.md)."""
    from pdfgc.models.config import CONFIG_DIR_ENV, config_dir

    repo_dir = config_dir()
    assert repo_dir == Path(__file__).resolve().parents[1] / "configs" / "model"  # source tree: the single source
    (tmp_path / "mini.yaml").write_text((repo_dir / "tiny.yaml").read_text().replace("name: tiny", "name: mini"))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    assert config_dir() == tmp_path
    assert load_model_config("mini")["name"] == "mini"
    with pytest.raises(FileNotFoundError, match="available names: \\['mini'\\]"):
        load_model_config("tiny")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="PDFGC_MODEL_CONFIG_DIR="):
        load_model_config("tiny")


def test_appearance_stem_options_make_f_sp_a_true_map_at_small_sizes():
    """With the reference stem (stride 32) a 56 px input gives a 2x2 layer4 map, and f_sp is that map replicated
    to 7x7 by adaptive_avg_pool2d (columns 0-2 identical). A stride-1 stem without max-pool (stride 8) gives a 7x7
    layer4 map, and f_sp is conv1x1(layer4) without any pooling. The parameter layout is the same
    (docs/training.md, experiment log 2026-12-02 (c))."""
    tiny = dict(load_model_config("tiny")["appearance"])
    assert (tiny["stem_stride"], tiny["stem_pool"]) == (1, False)  # the tiny model's (experiment log (c), (f))
    tiny["layer_strides"] = [2, 2, 2]  # (the tiny model also drops layer4's stride, log (o): tested below)
    tiny["spatial_size"] = 7
    assert (load_model_config("pdfgc")["appearance"]["stem_stride"],
            load_model_config("pdfgc")["appearance"]["stem_pool"]) == (2, True)  # the released stem
    ref_cfg = {**tiny, "stem_stride": 2, "stem_pool": True}
    cfg = tiny
    torch.manual_seed(0)
    small, ref = build_component(cfg).eval(), build_component(ref_cfg).eval()
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        _, sp_ref = ref(x)
        assert torch.equal(sp_ref[..., 0], sp_ref[..., 1]) and torch.equal(sp_ref[..., 1], sp_ref[..., 2])
        f_app, f_sp = small(x)
        trunk = small.model.features(x)
        assert trunk.shape[-2:] == (7, 7)
        torch.testing.assert_close(f_sp, small.conv1x1(trunk))
        torch.testing.assert_close(f_app, trunk.mean(dim=(2, 3)))
    assert (f_sp[..., 0] - f_sp[..., 1]).abs().max() > 1e-3


def test_finer_start_size_builds_a_generator_and_appearance_map_that_fit_each_other():
    """`generator.start_size: 14` (56 px: 14 -> 28 -> 56, channels by the same 56-referenced table) with the
    appearance trunk's `layer_strides: [2, 2, 1]` (total stride 4 with the tiny stem): f_sp is the true 14x14
    layer4 map (no pooling), the model config derives the appearance's spatial size from the generator, a start
    size that is not image_size / 2^k is refused, and the reference configs carry no new key."""
    from pdfgc.models.config import resolve_model_config
    from pdfgc.models.generator import Generator, channel_table

    assert channel_table(56, 1, 16, 32, s0=14) == {14: 32, 28: 32, 56: 16}  # = the 7-based table without its 7
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in load_model_config("tiny").items()}
    for name in ("generator", "generator0"):
        cfg[name]["start_size"] = 14
    cfg["appearance"]["layer_strides"] = [2, 2, 1]
    for key in ("spatial_size", "spatial_dim"):
        cfg["appearance"].pop(key, None)
    cfg = resolve_model_config(cfg)
    assert (cfg["appearance"]["spatial_size"], cfg["appearance"]["spatial_dim"]) == (14, 32)
    torch.manual_seed(0)
    app, g = build_component(cfg["appearance"]).eval(), build_component(cfg["generator"]).eval()
    assert (g.start_size, len(g.convs), g.num_layers) == (14, 4, 5)  # two upsampling levels, not three
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        trunk = app.model.features(x)
        assert trunk.shape[-2:] == (14, 14)
        f_app, f_sp = app(x)
        torch.testing.assert_close(f_sp, app.conv1x1(trunk))
        img = g(torch.randn(2, g.style_dim), f_sp, noise_mode="const")
    assert img.shape == (2, 3, 56, 56)
    for bad in (8, 12, 56):  # 56/8 = 7 is not a power of two, 12 does not divide 56, 56 leaves no doubling
        with pytest.raises(ValueError, match="start_size"):
            Generator(image_size=56, style_dim=8, channel_multiplier=1, channel_base=16, channel_max=32,
                      start_size=bad)
    ref = load_model_config("pdfgc")  # the released layout, named; the built networks' configs stay as before
    assert (ref["generator"]["start_size"], ref["appearance"]["layer_strides"]) == (7, [2, 2, 2])
    assert "start_size" not in build_component(ref["generator0"]).config
    tiny = load_model_config("tiny")  # the tiny model's choice (experiment log (o))
    assert (tiny["generator"]["start_size"], tiny["appearance"]["layer_strides"]) == (14, [2, 2, 1])
