"""Training stages composed from the real Hydra config (model=tiny, data=synthetic), run in-process.

Independent expectations: parameters/BN statistics compared to copies taken before training; global_step
compared to the hand-counted number of optimizer steps; EMA compared to its defining blend; exact resume compared
to an uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

def compose_cfg(tmp_path, *overrides):
    from pdfgc.train.config import compose

    return compose([f"paths.output_dir={tmp_path}", "logger=none", "trainer.enable_progress_bar=false",
                    "trainer.enable_model_summary=false", *overrides])


def small(stage: str) -> list[str]:
    """Small batches: the point is the wiring, not throughput."""
    bs = {"motion": 2, "lip": 2, "pose": 4, "eye": 4, "emo": 2}[stage]
    return [f"stage={stage}", f"stage.batch_size={bs}", "stage.log.sample_every=0", "stage.checkpoint.every=0"]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: nn.Module) -> set[str]:
    now = module.state_dict()
    return {k for k, v in before.items() if v.dtype.is_floating_point and not torch.equal(v, now[k])}


# ---------------------------------------------------------------------------------------------- every stage runs
@pytest.mark.parametrize("stage", ["motion", "lip", "pose", "eye", "emo"])
def test_stage_fast_dev_run_composes_from_real_config(tmp_path, stage):
    from pdfgc.stages import STAGES
    from pdfgc.train.run import run_stage

    cfg = compose_cfg(tmp_path, *small(stage), "debug=fast_dev_run")
    assert cfg.data.image_size == cfg.model.image_size  # one source of truth
    r = run_stage(cfg)
    m, trainer = r["module"], r["trainer"]
    assert m.iteration == 1
    gan = stage in ("motion", "emo")
    assert trainer.global_step == (2 if gan else 1)
    assert isinstance(m, STAGES[stage]) and m.optimizer_steps(1) == trainer.global_step
    metrics = trainer.callback_metrics
    total = metrics["total"]
    assert torch.isfinite(total)
    # the generator total is the weighted sum of the logged terms, and every term with a non-zero weight is there
    on = {k: w for k, w in m.weights.items() if w}
    missing = [k for k in on if f"loss/{k}" not in metrics]
    assert not missing, f"terms with non-zero weight not computed: {missing}"
    want = sum(w * float(metrics[f"loss/{k}"]) for k, w in on.items())
    assert float(total) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert Path(r["last_ckpt"]).is_file()


# ---------------------------------------------------------------------------------------------- freezing
FROZEN_EXPECTATIONS = {
    # stage: (prefixes that must not change, prefixes that must change)
    "lip": (("nets.motion.model.", "nets.motion.to_headpose.", "nets.motion.to_eye.", "nets.motion.to_emo."),
            ("nets.motion.to_mouth.", "nets.motion.mouth_embed.", "nets.audio.")),
    "pose": (("nets.motion.model.", "nets.motion.to_mouth.", "nets.motion.to_eye."),
             ("nets.motion.to_headpose.", "nets.motion.headpose_embed.")),
    "emo": (("nets.appearance.", "nets.audio.", "nets.motion.model.", "nets.motion.to_headpose.",
             "nets.motion.to_eye.", "nets.motion.to_mouth.", "nets.motion.headpose_embed.", "nets.motion.eye_embed."),
            ("nets.motion.to_emo.", "nets.motion.emo_embed.", "nets.generator.", "nets.discriminator.")),
}


@pytest.mark.parametrize("stage", ["lip", "pose", "emo"])
def test_frozen_parts_keep_parameters_and_bn_statistics(tmp_path, stage):
    import pytorch_lightning as pl

    from pdfgc.train.run import build_stage, run_stage

    cfg = compose_cfg(tmp_path, *small(stage), "stage.iterations=2")
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    before = snapshot(build_stage(cfg))  # same seed as run_stage -> the same initial weights
    m = run_stage(cfg)["module"]
    diff = changed(before, m)
    frozen, trained = FROZEN_EXPECTATIONS[stage]
    bad = sorted(k for k in diff if k.startswith(frozen))
    assert not bad, f"frozen tensors changed: {bad[:5]}"
    # BN running statistics of the frozen trunk are among the checked tensors
    assert any("running_mean" in k and k.startswith(frozen) for k in before)
    for prefix in trained:
        assert any(k.startswith(prefix) for k in diff), f"nothing under {prefix} was trained"
    # frozen modules stay in eval even after Lightning's train()
    m.train()
    for mod in m.frozen_modules():
        assert not any(x.training for x in mod.modules())


def test_trainable_override_is_per_component(tmp_path):
    """stage.trainable={generator: []} freezes the generator only: the emotion head (declared by the stage, not
    named in the override) still trains; freezing everything the G optimizer could train is a clear error."""
    import pytorch_lightning as pl

    from pdfgc.stages.config import StageConfigError
    from pdfgc.train.run import build_stage, run_stage

    cfg = compose_cfg(tmp_path, *small("emo"), "stage.iterations=2", "stage.trainable={generator:[]}")
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    before = snapshot(build_stage(cfg))
    diff = changed(before, run_stage(cfg)["module"])
    assert not [k for k in diff if k.startswith("nets.generator.")]
    assert any(k.startswith("nets.motion.to_emo.") for k in diff)
    assert any(k.startswith("nets.discriminator.") for k in diff)
    cfg = compose_cfg(tmp_path / "b", *small("emo"), "stage.iterations=2",
                      "stage.trainable={generator:[],motion:[]}")
    with pytest.raises(StageConfigError, match="nothing to train outside the discriminator"):
        run_stage(cfg)


# ---------------------------------------------------------------------------------------------- counters, EMA
def test_global_step_counts_optimizer_steps_with_lazy_r1(tmp_path):
    from pdfgc.train.run import run_stage

    # 3 iterations: G + D each (6) and a lazy-R1 D step at iterations 0 and 2 (interval 2) -> 8 optimizer steps
    cfg = compose_cfg(tmp_path, *small("motion"), "stage.iterations=3", "stage.gan.r1_gamma=1.0",
                      "stage.gan.r1_interval=2")
    r = run_stage(cfg)
    assert r["module"].iteration == 3
    assert r["trainer"].global_step == 8
    # the lazy-R1 rescaling of D's Adam (StyleGAN2): lr * c, betas ** c with c = 2/3
    d_opt = r["module"].optimizers()[1].optimizer
    c = 2 / 3
    assert d_opt.param_groups[0]["lr"] == pytest.approx(1e-4 * c)
    assert d_opt.param_groups[0]["betas"][1] == pytest.approx(0.99 ** c)


def test_ema_blend_and_half_life():
    from pdfgc.stages.ema import EMA, ema_beta

    assert ema_beta(32, 10**9, half_life_kimg=10, rampup=None) == pytest.approx(0.5 ** (32 / 10_000))
    # after exactly one half-life worth of images the old average weighs 1/2, whatever the batch size
    for bs in (4, 64):
        steps = 10_000 // bs
        assert ema_beta(bs, 10**9, 10, None) ** steps == pytest.approx(0.5, rel=1e-2)
    assert ema_beta(8, 100, 10, rampup=0.05) == pytest.approx(0.5 ** (8 / 5.0))  # ramp-up caps the half-life
    net = nn.Linear(2, 2)
    ema = EMA(net, half_life_kimg=0.001, rampup=None)  # 1 image half-life
    old = ema.shadow.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    beta = ema.update(net, batch_images=1, images_seen=1)
    assert beta == pytest.approx(0.5)
    assert torch.allclose(ema.shadow.weight, 0.5 * old + 0.5 * net.weight)


def test_ema_update_at_beta_0_9_weighs_shadow_and_model_by_hand():
    """At beta 0.5 swapping the two blend weights changes nothing; at beta 0.9 it does. Hand values: shadow 1,
    model 11 -> 0.9 * 1 + 0.1 * 11 = 2 (swapped: 10). Buffers (BN statistics, the step counter) are copied."""
    import math

    from pdfgc.stages.ema import EMA

    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    # beta = 0.5 ** (batch_images / half_life_img) = 0.9 with one image per update
    ema = EMA(net, half_life_kimg=1.0 / (1000.0 * math.log2(1 / 0.9)), rampup=None)
    with torch.no_grad():
        net[0].weight.fill_(11.0)
        net[0].bias.fill_(-9.0)
        net[1].weight.fill_(21.0)
        net[1].bias.fill_(1.0)  # unchanged parameter: stays 1
    net[1].running_mean.copy_(torch.tensor([3.0, -4.0]))
    net[1].running_var.copy_(torch.tensor([0.25, 5.0]))
    net[1].num_batches_tracked.fill_(7)
    beta = ema.update(net, batch_images=1, images_seen=1)
    assert beta == pytest.approx(0.9, abs=1e-12)
    sh = ema.shadow
    assert torch.allclose(sh[0].weight, torch.full((2, 3), 2.0), atol=1e-6)   # 0.9*1 + 0.1*11
    assert torch.allclose(sh[0].bias, torch.full((2,), -0.0), atol=1e-6)      # 0.9*1 + 0.1*(-9)
    assert torch.allclose(sh[1].weight, torch.full((2,), 3.0), atol=1e-6)     # 0.9*1 + 0.1*21
    assert torch.allclose(sh[1].bias, torch.full((2,), 1.0), atol=1e-6)
    assert torch.equal(sh[1].running_mean, torch.tensor([3.0, -4.0]))       # copied, not blended
    assert torch.equal(sh[1].running_var, torch.tensor([0.25, 5.0]))
    assert int(sh[1].num_batches_tracked) == 7
    # a second update blends from the new shadow: 0.9*2 + 0.1*11 = 2.9
    ema.update(net, batch_images=1, images_seen=2)
    assert torch.allclose(sh[0].weight, torch.full((2, 3), 2.9), atol=1e-6)
    # the model itself is untouched by the update
    assert torch.equal(net[0].weight, torch.full((2, 3), 11.0))


def test_ema_generator_moves_toward_the_trained_generator(tmp_path):
    import pytorch_lightning as pl

    from pdfgc.train.run import build_stage, run_stage

    cfg = compose_cfg(tmp_path, *small("motion"), "stage.iterations=3", "stage.ema.half_life_kimg=0.01",
                      "stage.ema.rampup=null")
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    g0 = torch.nn.utils.parameters_to_vector(build_stage(cfg).nets["generator0"].parameters()).detach()
    m = run_stage(cfg)["module"]
    g = torch.nn.utils.parameters_to_vector(m.nets["generator0"].parameters()).detach()
    e = torch.nn.utils.parameters_to_vector(m.ema.shadow.parameters()).detach()
    assert (e - g0).norm() > 0
    assert (e - g).norm() < (g0 - g).norm()


# ---------------------------------------------------------------------------------------------- exact resume
def test_resume_is_exact(tmp_path):
    """4 iterations in one run == 2 iterations + resume from the periodic checkpoint + 2 iterations."""
    from pdfgc.train.run import run_stage

    # motion: GAN, dropout in the trainable FAN trunk, random noise, lazy R1 -> every RNG consumer is exercised
    common = [*small("motion"), "stage.iterations=4", "stage.gan.r1_gamma=1.0", "stage.gan.r1_interval=3"]
    a = run_stage(compose_cfg(tmp_path / "a", *common, "stage.checkpoint.every=2"))
    mid = tmp_path / "a" / "checkpoints" / "iter_0000002.ckpt"
    assert mid.is_file()
    b = run_stage(compose_cfg(tmp_path / "b", *common, f"ckpt_path={mid}"))
    assert b["module"].iteration == 4 and b["trainer"].global_step == a["trainer"].global_step
    sa, sb = a["module"].state_dict(), b["module"].state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:  # networks, EMA generator, BN statistics, spectral-norm vectors
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6, rtol=0), k
    for oa, ob in zip(a["module"].optimizers(), b["module"].optimizers()):
        for pa, pb in zip(oa.optimizer.state.values(), ob.optimizer.state.values()):
            assert torch.allclose(pa["exp_avg"], pb["exp_avg"], atol=1e-6, rtol=0)
    # and the resumed run really started in the middle
    assert not (tmp_path / "b" / "checkpoints" / "iter_0000002.ckpt").exists()


def test_ckpt_path_of_another_stage_is_a_clear_error(tmp_path):
    from pdfgc.errors import UserError
    from pdfgc.train.run import run_stage

    a = run_stage(compose_cfg(tmp_path / "a", *small("pose"), "stage.iterations=1"))
    with pytest.raises(UserError, match="init_from"):
        run_stage(compose_cfg(tmp_path / "b", *small("eye"), "stage.iterations=2", f"ckpt_path={a['last_ckpt']}"))


# ---------------------------------------------------------------------------------------------- configuration
def test_zero_weight_skips_the_term_and_unknown_terms_are_errors(tmp_path):
    from pdfgc.stages.config import StageConfigError
    from pdfgc.train.run import build_stage

    cfg = compose_cfg(tmp_path, *small("motion"), "stage.loss.weights.vgg=0")
    m = build_stage(cfg)
    assert not m.on("vgg") and m.on("l1")
    from pdfgc.train.run import build_datamodule

    batch = build_datamodule(cfg, m).example_batch()
    out = m.generate(batch)
    terms = m.compute_losses(batch, out)
    assert "vgg" not in terms and m.perceptual.net is None  # not even built
    cfg = compose_cfg(tmp_path, *small("pose"), "+stage.loss.weights.bogus=1.0")
    with pytest.raises(StageConfigError, match="stage.loss.weights.bogus"):
        build_stage(cfg)


def test_copy_overlapping_copies_leading_block():
    from pdfgc.stages.base import copy_overlapping

    dst = nn.Linear(5, 3)  # weight (3,5)
    src = {"weight": torch.arange(12.0).view(3, 4), "bias": torch.tensor([7.0, 8.0, 9.0])}
    init = dst.weight.detach().clone()
    rep = copy_overlapping(dst, src)
    assert rep == {"copied": ["bias"], "partial": ["weight"], "skipped": []}
    assert torch.equal(dst.weight[:, :4], src["weight"]) and torch.equal(dst.weight[:, 4], init[:, 4])


def test_resume_from_final_last_ckpt_extends_training(tmp_path):
    """The last.ckpt written at the end of a run continues when stage.iterations is raised."""
    from pdfgc.train.run import run_stage

    a = run_stage(compose_cfg(tmp_path / "a", *small("pose"), "stage.iterations=2"))
    b = run_stage(compose_cfg(tmp_path / "b", *small("pose"), "stage.iterations=5", f"ckpt_path={a['last_ckpt']}"))
    assert b["module"].iteration == 5 and b["trainer"].global_step == 5


def test_copy_overlapping_keeps_effective_equal_linear_weight():
    """An EqualLinear (in 4) copied into a wider one (in 6): with zeros in the new inputs both layers must compute
    the same output (the effective weight is weight / sqrt(in), so the raw block must grow by sqrt(6/4))."""
    from pdfgc.models.layers import EqualLinear
    from pdfgc.stages.base import copy_overlapping

    torch.manual_seed(0)
    small_, wide = EqualLinear(4, 3, bias_init=1.0), EqualLinear(6, 3)
    rep = copy_overlapping(wide, small_.state_dict())
    assert rep["partial"] == ["weight"] and rep["copied"] == ["bias"]
    x = torch.randn(5, 4)
    x6 = torch.cat([x, torch.zeros(5, 2)], 1)
    # hand-computed oracle: y = x W^T / sqrt(4) + b
    expect = x @ small_.weight.detach().t() / 2.0 + 1.0
    assert torch.allclose(small_(x), expect, atol=1e-6)
    assert torch.allclose(wide(x6), expect, atol=1e-6)


@pytest.mark.parametrize("lip", [False, True])
def test_g0_transfer_makes_g_render_like_g0(tmp_path, lip):
    """`stage.g0_transfer`: when the unified motion f is an exact linear function of the codes, G fed with the codes
    as training feeds them ([f_app | lip | x1.2 emo | x1.2 eye | pose], `inference_codes`) must render the same
    image as G0 fed with [f_app | f] (oracle: G0 itself), for codes the fit never saw, in both G and its EMA. With
    `g0_transfer.lip` part of f is carried by the audio lip code alone (x1.5), through G's lip columns; without it
    the lip columns are left alone and a lip code of 0 is fed."""
    from pdfgc.constants import EMO_SCALE, EYE_SCALE, LIP_SCALE
    from pdfgc.models.latent import assemble_style
    from pdfgc.stages.base import instantiate_component
    from pdfgc.train import checkpoint as ckpt_format
    from pdfgc.train.run import build_stage, run_stage

    r = run_stage(compose_cfg(tmp_path / "m", *small("motion"), "stage.iterations=1"))
    cfg = compose_cfg(tmp_path / "e", *small("emo"), f"stage.init_from={r['last_ckpt']}",
                      "stage.g0_transfer.enabled=true", "stage.g0_transfer.ridge=1e-4",
                      f"stage.g0_transfer.lip={lip}")
    m = build_stage(cfg)
    g0 = instantiate_component(m.model_cfg, "generator0")
    g0.load_state_dict(ckpt_format.read(r["last_ckpt"]).components["generator0_ema"])
    g0.eval()
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(8, 64, generator=gen)  # f lives in an 8-d subspace ...
    # ... and every code is a linear image of some of the same 8 latent numbers: with the lip option, the last 3
    # reach f only through the lip code (500-d, rank 3), the others through emo / eye / pose
    own = torch.ones(8)
    if lip:
        own[5:] = 0
    mix = {k: torch.randn(8, d, generator=gen) * own[:, None] for k, d in (("emo", 30), ("eye", 6), ("pose", 6))}
    mix_lip = torch.randn(8, 500, generator=gen) * (1 - own)[:, None]
    state = {}

    def fake_encode(x, heads=()):
        u = torch.randn(x.shape[0], 8, generator=gen)
        if x.shape[0] > 8:  # the fit's frames: zero-mean, uncorrelated latents (as in a large sample), so that the
            u = torch.linalg.qr(u - u.mean(0))[0] * x.shape[0] ** 0.5  # sequential fit is exact as well
        state["u"] = u
        return {"motion": u @ basis, **{k: u @ w / s for (k, w), s in zip(mix.items(), (EMO_SCALE, EYE_SCALE, 1.0))}}

    m.nets["motion"].encode = fake_encode
    m.nets["audio"].forward = lambda mel: (None, state["u"] @ mix_lip / LIP_SCALE)
    info = m.transfer_g0_motion({"frames": torch.zeros(4, 5, 3, 56, 56), "mel": torch.zeros(4, 5, 1, 80, 20)})
    assert info["r2"] > 0.999
    new = fake_encode(torch.zeros(6, 1))
    lip_in = state["u"] @ mix_lip  # the lip code as G receives it (the raw code x LIP_SCALE)
    s0 = m.generator.start_size
    f_app, f_sp = torch.randn(6, 128, generator=gen), torch.randn(6, 32, s0, s0, generator=gen)
    with torch.no_grad():
        want = g0(torch.cat([f_app, new["motion"]], 1), f_sp, noise_mode="const")
        style = assemble_style(f_app, lip_in, new["emo"] * EMO_SCALE, new["eye"] * EYE_SCALE, new["pose"])
        for g in (m.generator, m.ema.shadow):
            got = g.eval()(style, f_sp, noise_mode="const")
            assert (got - want).abs().max() < 2e-3, (got - want).abs().max()
    # without the transfer the same G ignores the codes' motion: the oracle must be able to fail
    m2 = build_stage(cfg)
    with torch.no_grad():
        assert (m2.generator.eval()(style, f_sp, noise_mode="const") - want).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------- emo decorrelation
def _decor_by_hand(x: np.ndarray, y: np.ndarray, eps: float = 1e-5) -> float:
    """Mean over (i, j) of the squared Pearson correlation of column i of x and column j of y (population std)."""
    n = len(x)
    zx = [(x[:, i] - x[:, i].mean()) / (x[:, i].std() + eps) for i in range(x.shape[1])]
    zy = [(y[:, j] - y[:, j].mean()) / (y[:, j].std() + eps) for j in range(y.shape[1])]
    total = 0.0
    for a in zx:
        for b in zy:
            total += (float(np.dot(a, b)) / n) ** 2
    return total / (len(zx) * len(zy))


def test_emo_decor_uses_the_memory_bank_rows_and_trains_only_the_current_codes(tmp_path):
    """Three emo iterations of 4 rows with a 5-row bank: the first `decor` is the batch statistic alone, the second
    is computed over the batch plus the 4 rows pushed before, the third over the batch plus the 5 most recent rows
    (FIFO), rows of the two banks staying paired. Gradients reach the current emotion codes only (not the audio
    features, not the earlier codes held in the bank), and equal those of the hand formula with the bank fixed."""
    from pdfgc.train.run import build_stage

    m = build_stage(compose_cfg(tmp_path, *small("emo"), "stage.loss.bank_size=5", "stage.loss.weights.vgg=0",
                                "stage.loss.weights.l1=0", "stage.loss.weights.sync=0"))
    emo_dim = m.nets["motion"].code_dims["emo"]
    aud_dim = m.nets["audio"].config["embed_dim"]
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(emo_dim, aud_dim, generator=gen)  # correlated features: the statistic is far from 0

    def step(i):
        e = torch.randn(4, emo_dim, generator=gen).requires_grad_(True)
        a = (e.detach() @ mix * (0.3 * i + 0.5) + torch.randn(4, aud_dim, generator=gen)).requires_grad_(True)
        out = {"c": 0, "fake": torch.zeros(2, 3, 8, 8), "real": torch.zeros(2, 3, 8, 8), "emo": e, "f_aud": a,
               "lip_a": torch.zeros(2, 2, 500)}
        return e, a, m.compute_losses({}, out)["decor"]

    n = lambda t: t.detach().double().numpy()
    e1, a1, d1 = step(0)
    assert d1.item() == pytest.approx(_decor_by_hand(n(e1), n(a1)), rel=1e-4)
    e2, a2, d2 = step(1)
    want2 = _decor_by_hand(np.concatenate([n(e2), n(e1)]), np.concatenate([n(a2), n(a1)]))
    assert d2.item() == pytest.approx(want2, rel=1e-4)
    assert abs(want2 - _decor_by_hand(n(e2), n(a2))) > 0.02  # the bank rows change the value
    d2.backward()
    assert e1.grad is None and a1.grad is None and a2.grad is None  # bank rows and audio carry no gradient
    assert e2.grad is not None and e2.grad.abs().sum() > 0
    # oracle gradient: the same statistic written out in torch with the bank rows as constants
    leaf = e2.detach().clone().requires_grad_(True)
    x = torch.cat([leaf, e1.detach()])
    y = torch.cat([a2, a1]).detach()
    xs = (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-5)
    ys = (y - y.mean(0)) / (y.std(0, unbiased=False) + 1e-5)
    ((xs.t() @ ys / 8).square().mean()).backward()
    assert torch.allclose(e2.grad, leaf.grad, atol=1e-7, rtol=1e-4)
    # FIFO: the bank now holds the last 5 pushed rows (e1[3], e2[0..3]), paired with (a1[3], a2[0..3])
    e3, a3, d3 = step(2)
    want3 = _decor_by_hand(np.concatenate([n(e3), n(e1)[3:], n(e2)]), np.concatenate([n(a3), n(a1)[3:], n(a2)]))
    assert d3.item() == pytest.approx(want3, rel=1e-4)


# ---------------------------------------------------------------------------------------------- eye stage layout
def test_eye_stage_regression_dims_are_the_dims_inference_keeps():
    """SPEC 1.7 (literal numbers, not read back from constants): with only blink on, inference keeps eye-code dims
    {0, 1, 4, 5}; with only gaze on, {2, 3}. The dims the eye stage regresses as openness must be among the blink
    dims, and its gaze dims must be exactly the gaze dims, or training teaches a layout inference throws away."""
    from pdfgc.models.latent import Controls, eye_mask
    from pdfgc.stages.eye import GAZE_CODE_DIMS, OPEN_DIMS

    kept_blink = {i for i, v in enumerate(eye_mask(Controls(blink=True), 6).tolist()) if v == 1.0}
    kept_gaze = {i for i, v in enumerate(eye_mask(Controls(gaze=True), 6).tolist()) if v == 1.0}
    assert kept_blink == {0, 1, 4, 5} and kept_gaze == {2, 3}
    assert tuple(OPEN_DIMS) == (0, 1) and tuple(GAZE_CODE_DIMS) == (2, 3)
    assert set(OPEN_DIMS) <= kept_blink and set(GAZE_CODE_DIMS) == kept_gaze


def _smooth_l1(d: float, beta: float = 0.1) -> float:
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def test_eye_stage_regresses_the_positive_frames_open_and_gaze_columns(tmp_path):
    """A motion encoder whose eye code is a known function of the image (code = the first 6 pixels of row 0,
    channel 0): the `open` term must be the smooth-L1 (beta 0.1) of the positive frames' code columns 0, 1 against
    eye_open, the `gaze` term that of columns 2, 3 against gaze (NaN masked), with hand-computed values."""
    from pdfgc.train.run import build_stage

    m = build_stage(compose_cfg(tmp_path, *small("eye")))
    motion = m.nets["motion"]
    motion.trunk = lambda x: x[:, 0, 0, :8]
    motion.head = lambda role, f, with_feature=False: (f, f[:, :6]) if with_feature else f[:, :6]
    s = 16
    codes = {  # rows = samples; every column differs so a wrong column or a wrong frame shows
        "anchor": [[-0.9, -0.8, -0.7, -0.6, -0.5, -0.4], [-0.3, -0.2, -0.1, -0.05, -0.01, -0.02]],
        "positive": [[0.9, 0.2, 0.5, -0.3, 0.7, 0.15], [0.1, 0.6, -0.8, 0.4, 0.35, 0.25]],
        "negative": [[0.45, 0.55, 0.65, 0.75, 0.85, 0.95], [-0.45, -0.55, -0.65, -0.75, -0.85, -0.95]],
    }
    batch = {}
    for k, rows in codes.items():
        x = torch.zeros(2, 3, s, s)
        x[:, 0, 0, :6] = torch.tensor(rows)
        x[:, 0, 0, 6:8] = 1.0  # keeps every feature row non-zero for the cosine similarities
        batch[k] = x
    batch["eye_open"] = torch.tensor([[0.6, 0.25], [0.1, 0.1]])
    batch["gaze"] = torch.tensor([[0.0, float("nan")], [-0.2, 0.4]])
    terms = m.compute_losses(batch)
    # open: positive code dims (0, 1) = (0.9, 0.2), (0.1, 0.6) vs (0.6, 0.25), (0.1, 0.1)
    #   diffs 0.3, 0.05, 0.0, 0.5 -> 0.25, 0.0125, 0, 0.45 -> mean 0.178125
    want_open = (_smooth_l1(0.3) + _smooth_l1(0.05) + _smooth_l1(0.0) + _smooth_l1(0.5)) / 4
    assert want_open == pytest.approx(0.178125)
    # gaze: positive code dims (2, 3) = (0.5, -0.3), (-0.8, 0.4) vs (0.0, NaN), (-0.2, 0.4)
    #   diffs 0.5, masked, 0.6, 0.0 -> 0.45, 0.55, 0 over 3 known entries
    want_gaze = (_smooth_l1(0.5) + _smooth_l1(0.6) + _smooth_l1(0.0)) / 3
    assert want_gaze == pytest.approx(1.0 / 3)
    assert terms["open"].item() == pytest.approx(want_open, abs=1e-6)
    assert terms["gaze"].item() == pytest.approx(want_gaze, abs=1e-6)


@pytest.mark.parametrize("stage", ["motion", "emo"])
def test_region_l1_terms_run_from_the_data_boxes(tmp_path, stage):
    from pdfgc.train.run import run_stage

    cfg = compose_cfg(tmp_path, *small(stage), "debug=fast_dev_run", "stage.loss.weights.l1_eye=2.0",
                      "stage.loss.weights.l1_mouth=1.0")
    metrics = run_stage(cfg)["trainer"].callback_metrics
    for term in ("l1_eye", "l1_mouth"):
        v = metrics[f"loss/{term}"]
        assert torch.isfinite(v) and v > 0


def test_emo_region_l1_reads_the_boxes_of_the_target_frame(tmp_path):
    """The emo target is the window's centre frame (c = 1 of 3), so its region terms must use that frame's boxes.
    Hand values: fake - real = 1 in the top-left quarter of the image, 0 elsewhere. At frame c the eye box is the
    top-left quarter (l1_eye = 1) and the mouth box the whole image (l1_mouth = 1/4); at the other frames both
    boxes are the bottom-right quarter (0): reading another frame's boxes gives 0."""
    from pdfgc.train.run import build_stage

    m = build_stage(compose_cfg(tmp_path, *small("emo"), "stage.loss.weights.vgg=0", "stage.loss.weights.l1=0",
                                "stage.loss.weights.sync=0", "stage.loss.weights.decor=0",
                                "stage.loss.weights.l1_eye=1.0", "stage.loss.weights.l1_mouth=1.0"))
    real = torch.zeros(2, 3, 8, 8)
    fake = real.clone()
    fake[:, :, :4, :4] = 1.0
    other = torch.tensor([0.5, 0.5, 1.0, 1.0])
    eye = other.repeat(2, 3, 1)
    mouth = other.repeat(2, 3, 1)
    eye[:, 1] = torch.tensor([0.0, 0.0, 0.5, 0.5])
    mouth[:, 1] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    terms = m.compute_losses({"gt_eye_box": eye, "gt_mouth_box": mouth},
                             {"c": 1, "fake": fake, "real": real, "emo": torch.zeros(6, 30)})
    assert set(terms) == {"l1_eye", "l1_mouth"}
    assert terms["l1_eye"].item() == pytest.approx(1.0, abs=1e-6)
    assert terms["l1_mouth"].item() == pytest.approx(0.25, abs=1e-6)


# ---------------------------------------------------------------------------------------------- adding a stage
def test_a_new_stage_is_a_class_and_a_yaml(tmp_path):
    """docs/ARCHITECTURE.md, "Adding a stage": defining a StageModule subclass registers it and its typed settings;
    one YAML naming it (here in an extra config folder) makes `stage=<name>` compose and train. The toy stage reuses
    the pose dataset and regresses only yaw."""
    from dataclasses import field, make_dataclass

    from pdfgc.stages import STAGES, register_configs
    from pdfgc.stages.base import REGISTRY
    from pdfgc.stages.config import StageConfig
    from pdfgc.stages.pose import PoseLossConfig, PoseStage
    from pdfgc.train.config import compose
    from pdfgc.train.run import run_stage

    YawConfig = make_dataclass("YawConfig", [("name", str, "yaw"), ("iterations", int, 2), ("batch_size", int, 2),
                                             ("loss", PoseLossConfig, field(default_factory=PoseLossConfig))],
                               bases=(StageConfig,))

    class YawStage(PoseStage):
        STAGE = "yaw"
        Config = YawConfig

        def compute_losses(self, batch):
            motion = self.nets["motion"]
            yaw = motion.head("pose", motion.trunk(batch["frames"]))[:, 0]
            return {"pose": torch.nn.functional.mse_loss(yaw, batch["pose"][:, 0])}

    try:
        assert STAGES["yaw"] is YawStage  # registered by being defined
        register_configs()
        (tmp_path / "conf" / "stage").mkdir(parents=True)
        (tmp_path / "conf" / "stage" / "yaw.yaml").write_text(
            f"defaults:\n  - yaw_schema\n  - _self_\n_target_: {__name__}.{YawStage.__qualname__}\n")
        cfg = compose([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "stage=yaw", "logger=none",
                       f"paths.output_dir={tmp_path / 'run'}", "stage.checkpoint.every=0",
                       "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"])
        r = run_stage(cfg)
        assert isinstance(r["module"], YawStage) and r["module"].iteration == 2
        assert torch.isfinite(r["trainer"].callback_metrics["loss/pose"])
    finally:
        REGISTRY.pop("yaw", None)


def test_lr_mul_puts_a_component_in_its_own_adam_group_and_scales_its_first_step(tmp_path):
    """`optim.g.lr_mul: {generator0: 5}`: G0's parameters train at 5x the lr, every other trainable parameter at the
    lr, each exactly once; Adam's first step moves a parameter by ~lr (sign of its gradient), so G0's weights move
    5x as far as the appearance encoder's after one step on the same loss."""
    from pdfgc.train.run import build_stage

    lr = 1e-3
    cfg = compose_cfg(tmp_path, *small("motion"), f"stage.optim.g.lr={lr}", "+stage.optim.g.lr_mul.generator0=5.0",
                      "stage.optim.g.betas=[0.0,0.99]")
    module = build_stage(cfg)
    g_opt, d_opt = module.configure_optimizers()
    by_id = {}
    for group in g_opt.param_groups:
        for p in group["params"]:
            assert id(p) not in by_id
            by_id[id(p)] = group["lr"]
    assert set(by_id) == {id(p) for p in module.generator_parameters()}
    g0 = {id(p) for p in module.nets["generator0"].parameters()}
    assert all(v == pytest.approx(5 * lr) for k, v in by_id.items() if k in g0)
    assert all(v == pytest.approx(lr) for k, v in by_id.items() if k not in g0)
    assert [g["lr"] for g in d_opt.param_groups] == [pytest.approx(module.config.optim.d.lr)]
    # one Adam step on a loss touching both: |delta| = lr per element at the first step (bias-corrected, beta1 = 0)
    app_w = module.nets["appearance"].conv1x1.weight
    g0_w = next(p for p in module.nets["generator0"].parameters() if p.ndim >= 2)
    before = (app_w.detach().clone(), g0_w.detach().clone())
    g_opt.zero_grad()
    ((app_w * torch.randn_like(app_w)).sum() + (g0_w * torch.randn_like(g0_w)).sum()).backward()
    g_opt.step()
    d_app = (app_w.detach() - before[0]).abs()
    d_g0 = (g0_w.detach() - before[1]).abs()
    torch.testing.assert_close(d_app, torch.full_like(d_app, lr), rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(d_g0, torch.full_like(d_g0, 5 * lr), rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("override, message", [
    ("+stage.optim.g.lr_mul.discriminator=2.0", "not a component this optimizer trains"),
    ("+stage.optim.g.lr_mul.lip_head=2.0", "not a component this optimizer trains"),
    ("+stage.optim.g.lr_mul.generator0=0.0", "a multiplier > 0"),
])
def test_lr_mul_is_checked_before_training(tmp_path, override, message):
    from pdfgc.stages.config import StageConfigError
    from pdfgc.train.run import check_run_config

    cfg = compose_cfg(tmp_path, "stage=motion", override)
    with pytest.raises(StageConfigError, match=message):
        check_run_config(cfg)


def test_precise_bn_sets_running_stats_to_the_average_over_calibration_batches(tmp_path):
    """`recalibrate_batchnorm`: each trained BatchNorm layer's running mean / variance become the plain average of
    the per-batch statistics of its inputs (computed here from the inputs captured by a hook); layers the
    calibration forward does not reach (the lip head, frozen in stage 1) keep theirs; the module's training RNG
    stream does not move."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from pdfgc.train.run import build_datamodule, build_stage

    cfg = compose_cfg(tmp_path, *small("motion"))
    module = build_stage(cfg)
    dm = build_datamodule(cfg, module)
    batches = list(dm.calibration_batches(3))
    assert len(batches) == 3 and batches[0]["app"].shape[0] == 2
    # the draw is fixed: a second call gives the same batches
    torch.testing.assert_close(next(iter(dm.calibration_batches(1)))["drv"], batches[0]["drv"])
    bn_app = next(m for m in module.nets["appearance"].modules() if isinstance(m, _BatchNorm))
    bn_trunk = next(m for m in module.nets["motion"].role_modules("trunk")[0].modules() if isinstance(m, _BatchNorm))
    heads = [m for m in module.nets["motion"].role_modules("lip")[0].modules() if isinstance(m, _BatchNorm)]
    before_heads = [snapshot(m) for m in heads]
    captured = {bn_app: [], bn_trunk: []}
    hooks = [m.register_forward_pre_hook(lambda m, a: captured[m].append(a[0].detach().clone())) for m in captured]
    rng_before = module._rng_cpu
    module.recalibrate_batchnorm(batches)
    for h in hooks:
        h.remove()
    assert module._rng_cpu is rng_before
    for bn, xs in captured.items():
        assert len(xs) == 3
        mean = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
        assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1
    for m, b in zip(heads, before_heads):
        for k, v in snapshot(m).items():
            assert torch.equal(v, b[k]), k


def test_precise_bn_runs_after_the_last_iteration_and_lands_in_last_ckpt(tmp_path):
    from pdfgc.train import checkpoint as ckpt_format
    from pdfgc.train.run import run_stage

    def run(out, n):
        cfg = compose_cfg(out, *small("motion"), "stage.iterations=2", "stage.loss.weights.vgg=0",
                          f"stage.precise_bn={n}")
        return ckpt_format.read(run_stage(cfg)["last_ckpt"]).components["appearance"]

    plain, precise = run(tmp_path / "a", 0), run(tmp_path / "b", 3)
    assert int(plain["model.bn1.num_batches_tracked"]) == 2        # two training steps
    assert int(precise["model.bn1.num_batches_tracked"]) == 3      # three calibration batches after them
    assert not torch.equal(plain["model.bn1.running_mean"], precise["model.bn1.running_mean"])
    assert torch.equal(plain["model.conv1.weight"], precise["model.conv1.weight"])  # weights untouched


# ---------------------------------------------------------------------------------------------- emo: codes as inference
@pytest.mark.parametrize("inference_codes", [True, False])
def test_emo_stage_feeds_g_the_codes_inference_feeds_it(tmp_path, inference_codes):
    """The style G is trained on is the style `Pipeline` gives G for the window's centre frame of the same video
    (SPEC 1.6: lip x1.5 after the 3-tap Gaussian over time, eye/emotion x1.2, pose averaged over 3 frames), except
    for the emotion code, which training averages over the window. With `inference_codes=false` G gets the raw codes
    of the centre frame instead. Expectation: the inference code path itself, run on the same networks."""
    from pdfgc.constants import EMO_SCALE
    from pdfgc.models.bundle import PDFGCModels
    from pdfgc.pipeline import Pipeline
    from pdfgc.train.run import build_datamodule, build_stage

    cfg = compose_cfg(tmp_path, *small("emo"), f"stage.inference_codes={inference_codes}")
    m = build_stage(cfg).eval()
    batch = build_datamodule(cfg, m).example_batch()
    # frames far apart (an untrained trunk reads consecutive synthetic frames alike): every code varies in time
    gen = torch.Generator().manual_seed(0)
    batch["frames"] = torch.rand(batch["frames"].shape, generator=gen) * 2 - 1
    k = batch["frames"].shape[1]
    c = k // 2
    with torch.no_grad():
        style = m.generate(batch)["style"]
    nets = m.nets
    pipe = Pipeline(PDFGCModels(nets["appearance"], nets["motion"], nets["audio"], m.generator), device="cpu")
    dims = pipe.code_dims
    edges = np.cumsum([0] + [dims[p] for p in ("app", "lip", "emo", "eye", "pose")])
    part = lambda s, i: s[..., edges[i]:edges[i + 1]]
    assert k >= 3 and edges[-1] == style.shape[1]
    for b in range(style.shape[0]):
        frames = batch["frames"][b]
        _, inf = pipe.generate(batch["app"][b:b + 1], batch["mel"][b], pose=frames, exp=frames, eye=frames,
                               drop_leading=False, return_style=True)
        want = inf[c].clone()
        want[edges[2]:edges[3]] = part(inf, 2).mean(0)  # the emotion: averaged over the window in training
        if not inference_codes:  # raw codes of the centre frame
            enc = nets["motion"].encode(frames[c:c + 1], heads=("pose", "eye"))
            with torch.no_grad():
                lip = nets["audio"](batch["mel"][b][c:c + 1])[1][0]
            want[edges[1]:edges[2]] = lip
            want[edges[2]:edges[3]] /= EMO_SCALE
            want[edges[3]:edges[4]] = enc["eye"][0]
            want[edges[4]:edges[5]] = enc["pose"][0]
        for i, name in enumerate(("app", "lip", "emo", "eye", "pose")):
            assert torch.allclose(part(style[b], i), part(want, i), atol=1e-5, rtol=1e-4), name
