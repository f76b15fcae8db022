"""Pipeline.generate semantics with spy networks whose outputs are known functions of their inputs, so every slot of
the style vector fed to the generator can be predicted by hand (SPEC 1.5-1.8)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from pdfgc.constants import APP_DIM, EMO_DIM, EYE_DIM, LIP_DIM, STYLE_DIM
from pdfgc.pipeline import Controls, InferenceSettings, Pipeline, PipelineError
from pdfgc.pipeline.core import to_uint8

S = 16
SIDE = math.exp(-0.5) / (1 + 2 * math.exp(-0.5))
CENTRE = 1 / (1 + 2 * math.exp(-0.5))
LIP0, EMO0 = APP_DIM, APP_DIM + LIP_DIM
EYE0 = EMO0 + EMO_DIM
POSE0 = EYE0 + EYE_DIM
RAMP6 = torch.arange(1.0, 7.0)


class SpyAppearance(nn.Module):
    def forward(self, x):
        return torch.arange(APP_DIM, dtype=torch.float32)[None] / APP_DIM, torch.zeros(x.shape[0], 8, 7, 7)


class SpyMotion(nn.Module):
    """pose = v*(1..6), eye = -v*(1..6), emo = 2v, where v is the mean pixel value of the driver frame."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        v = x.mean(dim=(1, 2, 3))
        self.seen.extend(v.tolist())
        return v[:, None] * RAMP6, -v[:, None] * RAMP6, 2 * v[:, None].expand(-1, EMO_DIM), torch.zeros(len(v), 512)


class SpyAudio(nn.Module):
    """lip = mean of the mel window (every dim)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, mel):
        self.calls += 1
        v = mel.mean(dim=(1, 2, 3))
        return torch.zeros(len(v), 512), v[:, None].expand(-1, LIP_DIM)


class SpyGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.styles = []
        self.batches = []

    def forward(self, style, spatial, noise_mode="cached", rng=None):
        assert style.shape[1] == STYLE_DIM and spatial.shape[0] == style.shape[0]
        self.styles.append(style.clone())
        self.batches.append(style.shape[0])
        return torch.tanh(style[:, LIP0:LIP0 + 3, None, None].expand(-1, 3, S, S))


class SpyModels(nn.Module):
    image_size = S
    code_dims = {"app": APP_DIM, "lip": LIP_DIM, "emo": EMO_DIM, "eye": EYE_DIM, "pose": EYE_DIM}

    def __init__(self):
        super().__init__()
        self.appearance, self.motion, self.audio, self.generator = SpyAppearance(), SpyMotion(), SpyAudio(), \
            SpyGenerator()


def driver(values):
    """(L,3,S,S) frames filled with the given values (frame k has mean values[k])."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 3, S, S).clone()


def mel(n):
    """n windows; window i has value (i+1)/100."""
    return (torch.arange(1, n + 1, dtype=torch.float32) / 100)[:, None, None, None].expand(-1, 1, 80, 20).clone()


def run(controls, n=7, pose=None, exp=None, eye=None, batch_size=8):
    models = SpyModels()
    pipe = Pipeline(models, batch_size=batch_size)
    out = pipe.generate(torch.zeros(1, 3, S, S), mel(n), pose=pose, exp=exp, eye=eye, controls=controls)
    assert out.shape == (n, 3, S, S)
    return torch.cat(models.generator.styles), models


def naive_pose_smooth(seq):
    n = len(seq)
    out = []
    for i in range(n):
        lo, hi = max(0, i - 1), min(n - 1, i + 1)
        window = seq[lo:hi + 1]
        out.append(sum(window) / len(window))
    return out


def naive_lip_smooth(seq):
    pad = [0.0] + list(seq) + [0.0]
    return [SIDE * pad[i] + CENTRE * pad[i + 1] + SIDE * pad[i + 2] for i in range(len(seq))]


def test_all_controls_style_slots_by_hand():
    n = 7
    pose_vals = [0.9, 0.8, 0.1, 0.2, 0.3]  # first two dropped -> 0.1, 0.2, 0.3 looped
    exp_vals = [0.5, 0.5, -0.4, 0.6]  # -> -0.4, 0.6 looped
    eye_vals = [0.0, 0.0, 0.7]  # -> 0.7 held
    style, models = run(["all"], n, driver(pose_vals), driver(exp_vals), driver(eye_vals))
    assert style.shape == (n, STYLE_DIM)
    # appearance slot: f_app broadcast
    assert torch.allclose(style[:, :APP_DIM], torch.arange(APP_DIM, dtype=torch.float32)[None] / APP_DIM)
    # lip: 1.5 x audio lip, Gaussian over time with zero padding
    lip_raw = [1.5 * (i + 1) / 100 for i in range(n)]
    assert style[:, LIP0].tolist() == pytest.approx(naive_lip_smooth(lip_raw), abs=1e-6)
    assert torch.equal(style[:, LIP0:EMO0], style[:, LIP0:LIP0 + 1].expand(-1, LIP_DIM))
    # pose: frame i uses driver frame 2 + (i mod 3), 3-tap average with the edge rule
    seq = [pose_vals[2 + i % 3] for i in range(n)]
    assert style[:, POSE0].tolist() == pytest.approx(naive_pose_smooth(seq), abs=1e-6)
    assert torch.allclose(style[:, POSE0:], style[:, POSE0:POSE0 + 1] * RAMP6, atol=1e-6)
    # emo: 1.2 x (2 v), no smoothing; eye: 1.2 x (-v * (1..6)), no smoothing
    emo_seq = [1.2 * 2 * exp_vals[2 + i % 2] for i in range(n)]
    assert style[:, EMO0].tolist() == pytest.approx(emo_seq, abs=1e-6)
    assert torch.allclose(style[:, EYE0:POSE0], torch.full((n, 1), -1.2 * 0.7) * RAMP6, atol=1e-6)


def test_headpose_off_gives_zero_pose_and_skips_the_pose_driver():
    style, models = run(["mouth", "blink", "gaze", "emo"], 5, None, driver([0, 0, 0.3, 0.4]), driver([0, 0, 0.5]))
    assert not style[:, POSE0:].any()
    assert style[:, EMO0:EYE0].abs().sum() > 0 and style[:, EYE0:POSE0].abs().sum() > 0
    # only the exp (2 distinct used frames) and eye (1) frames were encoded
    assert sorted(round(v, 5) for v in models.motion.seen) == [0.3, 0.4, 0.5]


def test_blink_off_keeps_only_gaze_dims_and_gaze_off_only_blink_dims():
    eye = driver([0, 0, 0.5])
    style, _ = run(["gaze"], 3, eye=eye)
    expect = -1.2 * 0.5 * RAMP6 * torch.tensor([0, 0, 1, 1, 0, 0.0])
    assert torch.allclose(style[:, EYE0:POSE0], expect.expand(3, -1), atol=1e-6)
    style, _ = run(["blink"], 3, eye=eye)
    expect = -1.2 * 0.5 * RAMP6 * torch.tensor([1, 1, 0, 0, 1, 1.0])
    assert torch.allclose(style[:, EYE0:POSE0], expect.expand(3, -1), atol=1e-6)


def test_no_controls_is_the_canonical_face_and_runs_no_encoder():
    style, models = run([], 4)
    assert not style[:, APP_DIM:].any()
    assert models.audio.calls == 0 and models.motion.seen == []


def test_mouth_off_zero_lip_and_audio_net_not_run():
    style, models = run(["headpose"], 4, pose=driver([0.1]))
    assert not style[:, LIP0:EMO0].any() and models.audio.calls == 0
    # 1-frame driver: held still -> smoothed constant = constant
    assert style[:, POSE0].tolist() == pytest.approx([0.1] * 4)


def test_short_driver_loops_across_batches_without_crash():
    # 20 frames, batch 8, a 6-frame driver (4 after the drop): the reference would misalign or crash here
    vals = [9, 9, 0.1, 0.2, 0.3, 0.4]
    style, models = run(["headpose"], 20, pose=driver(vals), batch_size=8)
    seq = [vals[2 + i % 4] for i in range(20)]
    assert style[:, POSE0].tolist() == pytest.approx(naive_pose_smooth(seq), abs=1e-6)
    assert models.generator.batches == [8, 8, 4]
    # each distinct driver frame encoded exactly once
    assert sorted(round(v, 5) for v in models.motion.seen) == [0.1, 0.2, 0.3, 0.4]


def test_same_driver_for_all_controls_is_encoded_once():
    d = driver([0, 0, 0.1, 0.2, 0.3, 0.4, 0.5])
    style, models = run(["all"], 3, d, d, d)
    # only the 3 frames that the 3 output frames use, once each (the reference encodes 3 images per frame)
    assert sorted(round(v, 5) for v in models.motion.seen) == [0.1, 0.2, 0.3]


def test_result_does_not_depend_on_batch_size():
    d = driver([0.0, 0.1, 0.2, 0.3, 0.4])
    s1, _ = run(["all"], 11, d, d, d, batch_size=1)
    s8, m8 = run(["all"], 11, d, d, d, batch_size=8)
    assert torch.allclose(s1, s8, atol=1e-6) and m8.generator.batches == [8, 3]


def test_missing_driver_for_an_on_control_is_a_clear_error():
    with pytest.raises(PipelineError, match="headpose control is on but no pose driver"):
        run(["headpose"], 3)
    with pytest.raises(PipelineError, match="eye"):
        run(["blink"], 3)


def test_bad_tensor_shapes_are_clear_errors():
    pipe = Pipeline(SpyModels())
    with pytest.raises(PipelineError, match=r"source: expected \(1,3,16,16\)"):
        pipe.generate(torch.zeros(1, 3, 8, 8), mel(2), controls=[])
    with pytest.raises(PipelineError, match=r"pose: expected a float tensor \(L,3,16,16\)"):
        pipe.generate(torch.zeros(1, 3, S, S), mel(2), pose=torch.zeros(2, 3, 8, 8), controls=["headpose"])


def test_code_sizes_come_from_the_model_not_from_constants():
    """A model variant with other code widths (lip 7, emo 3, eye 6, pose 4): the off controls' zero codes take the
    model's widths, so the style vector is [app | 7 | 3 | 6 | 4] wide."""
    dims = {"app": 5, "lip": 7, "emo": 3, "eye": 6, "pose": 4}

    class Narrow(SpyModels):
        code_dims = dims

    models = Narrow()
    models.appearance.forward = lambda x: (torch.ones(1, 5), torch.zeros(x.shape[0], 8, 7, 7))
    seen = []
    models.generator.forward = lambda style, spatial, noise_mode, rng: seen.append(style) or \
        torch.zeros(style.shape[0], 3, S, S)
    Pipeline(models, device="cpu").generate(torch.zeros(1, 3, S, S), mel(3), controls=[])
    assert seen[0].shape == (3, sum(dims.values()))
    assert torch.equal(seen[0][:, :5], torch.ones(3, 5)) and not seen[0][:, 5:].any()


def test_controls_are_parsed_at_the_boundary_only():
    """`generate` parses user input once (`Controls.parse`); the functions below it take a `Controls` and refuse a
    string or a list, so nothing can be re-parsed further down."""
    from pdfgc.models.latent import apply_controls, eye_mask

    pipe = Pipeline(SpyModels(), device="cpu")
    z = torch.zeros(2, 6)
    for bad in ("all", ["mouth"], None):
        with pytest.raises(TypeError, match="Controls"):
            pipe.encode_motion({}, 3, bad)
        with pytest.raises(TypeError, match="Controls"):
            apply_controls(z, z, z, z, bad)
        with pytest.raises(TypeError, match="Controls"):
            eye_mask(bad, 6)
    with pytest.raises(TypeError, match="Controls"):
        pipe._generate(torch.zeros(1, 3, S, S), mel(2), {}, "all", True, False, False, False)
    # the same request as a string, a list and a Controls gives the same style
    eye = driver([0, 0, 0.5])
    styles = [run(c, 3, eye=eye)[0] for c in ("gaze,mouth", ["mouth", "gaze"], Controls(mouth=True, gaze=True))]
    assert torch.equal(styles[0], styles[1]) and torch.equal(styles[0], styles[2])


def test_settings_defaults_drive_the_pipeline():
    """`Pipeline(models)` takes every default from `InferenceSettings`; `generate(controls=None)` uses the
    pipeline's controls; settings are checked once, where they are given."""
    pipe = Pipeline(SpyModels(), device="cpu")
    d = InferenceSettings()
    assert (pipe.batch_size, pipe.seed, pipe.noise_mode, pipe.precision) == (d.batch_size, d.seed, d.noise_mode,
                                                                             d.precision) == (8, 20202001, "cached",
                                                                                              "fp32")
    models = SpyModels()
    Pipeline(models, device="cpu", controls=["headpose"]).generate(torch.zeros(1, 3, S, S), mel(3),
                                                                    pose=driver([0.4]))
    style = torch.cat(models.generator.styles)
    assert not style[:, LIP0:POSE0].any() and style[:, POSE0].tolist() == pytest.approx([0.4] * 3)
    with pytest.raises(TypeError, match="unknown inference setting.*batchsize"):
        Pipeline(SpyModels(), batchsize=4)
    for bad, match in ((dict(batch_size=0), "batch_size: expected an integer >= 1"),
                       (dict(batch_size="8"), "batch_size: expected an integer"),
                       (dict(seed=1.5), "seed: expected an integer"),
                       (dict(noise_mode="random"), "noise_mode: expected one of cached, const, none"),
                       (dict(device="tpu"), "device: expected auto, cpu"),
                       (dict(layout="grid"), "layout: expected one of video, panel")):
        with pytest.raises(PipelineError, match=match):
            Pipeline(SpyModels(), **bad)
    with pytest.raises(TypeError, match="batch_size are fixed when the Pipeline is built"):
        pipe(np.zeros((S, S, 3), np.uint8), np.zeros(16000, np.float32), batch_size=4)


def test_bf16_warning_once_per_pipeline(monkeypatch, caplog):
    """On a CPU without native bfloat16 the slow-bf16 warning comes once per Pipeline built (not per call, and not
    hidden by a process-wide flag)."""
    from pdfgc.pipeline import core

    monkeypatch.setattr(core, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="pdfgc.pipeline.core"):
        pipes = [Pipeline(SpyModels(), device="cpu", precision="bf16") for _ in range(2)]
        pipes[0].generate(torch.zeros(1, 3, S, S), mel(2), controls=[])
        Pipeline(SpyModels(), device="cpu", precision="fp32")
    assert sum("no native bfloat16" in r.getMessage() for r in caplog.records) == 2


def test_identical_driver_frames_are_encoded_once():
    # a static expression clip (the reference's exp examples repeat one frame 30 times) costs one encoding
    exp = driver([0.9, 0.9] + [0.25] * 30)
    style, models = run(["emo"], 12, exp=exp)
    assert [round(v, 5) for v in models.motion.seen] == [0.25]
    assert style[:, EMO0].tolist() == pytest.approx([1.2 * 2 * 0.25] * 12)


# ------------------------------------------------------------------------------------------------------ precision

class AutocastProbe:
    """Wraps a spy network's forward to record whether it ran under CPU autocast, and at which dtype."""

    def __init__(self, net):
        self.seen = []
        inner = net.forward

        def forward(*args, **kwargs):
            on = torch.is_autocast_enabled("cpu")
            self.seen.append(torch.get_autocast_dtype("cpu") if on else None)
            return inner(*args, **kwargs)

        net.forward = forward


def tiny_models_and_inputs():
    """The tiny architecture with seeded random weights, a source, a 6-frame driver and 5 mel windows."""
    from pdfgc.models.bundle import PDFGCModels, load_model_config

    torch.manual_seed(0)
    models = PDFGCModels.from_config(load_model_config("tiny"))
    s = models.image_size
    g = torch.Generator().manual_seed(1)
    return (models, torch.rand(1, 3, s, s, generator=g) * 2 - 1, torch.rand(6, 3, s, s, generator=g) * 2 - 1,
            torch.rand(5, 1, 80, 20, generator=g))


def test_bf16_runs_every_network_under_autocast_and_keeps_postprocessing_fp32(caplog):
    d = driver([0.0, 0.1, 0.2, 0.3, 0.4])
    styles = {}
    for precision in ("fp32", "bf16"):
        models = SpyModels()
        probes = {k: AutocastProbe(getattr(models, k)) for k in ("appearance", "motion", "audio", "generator")}
        pipe = Pipeline(models, batch_size=4, precision=precision)
        pipe.generate(torch.zeros(1, 3, S, S), mel(9), d, d, d, controls=["all"])
        want = None if precision == "fp32" else torch.bfloat16
        for name, probe in probes.items():
            assert probe.seen and set(probe.seen) == {want}, name
        styles[precision] = torch.cat(models.generator.styles)
    # the spies' arithmetic is not autocast-affected: any difference would come from the smoothing/scaling between
    # the networks, which must stay float32
    assert styles["bf16"].dtype == torch.float32
    assert torch.equal(styles["bf16"], styles["fp32"])


def test_precision_errors():
    with pytest.raises(PipelineError, match="precision: expected one of"):
        Pipeline(SpyModels(), precision="int8")
    with pytest.raises(PipelineError, match="fp16 needs a CUDA device.*bf16"):
        Pipeline(SpyModels(), device="cpu", precision="fp16")


def test_bf16_generates_close_to_fp32_with_real_networks():
    """The tiny architecture with random weights: bf16 output differs from fp32 (bf16 arithmetic did run) by a
    small fraction of the image's own spread."""
    models, src, drv, m = tiny_models_and_inputs()
    out = {p: Pipeline(models, precision=p).generate(src, m, drv, drv, drv) for p in ("fp32", "bf16")}
    assert out["bf16"].dtype == torch.float32 and out["bf16"].shape == out["fp32"].shape
    rel = (out["bf16"] - out["fp32"]).pow(2).mean().sqrt() / out["fp32"].std()
    assert 1e-4 < rel < 0.1, rel


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_generation_matches_cpu_fp32(precision):
    """On a GPU: the same frames as the CPU in fp32 (to float tolerance), and close in half precision."""
    models, src, drv, m = tiny_models_and_inputs()
    cpu = Pipeline(models, device="cpu").generate(src, m, drv, drv, drv)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    gpu = Pipeline(models, device="cuda", precision=precision).generate(src, m, drv, drv, drv)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    rel = (gpu - cpu).pow(2).mean().sqrt() / cpu.std()
    assert rel < (1e-4 if precision == "fp32" else 0.1), rel


def test_driver_frames_give_the_same_frames_as_float_drivers_without_a_float_copy(monkeypatch):
    """`DriverFrames` (uint8 crops preprocessed batch by batch, what `__call__` passes) against the same drivers
    preprocessed up front: identical codes and frames, identical panels, and no preprocessing call ever holds more
    than one batch of float frames."""
    from pdfgc.data import align
    from pdfgc.pipeline.core import DriverFrames, make_panel

    models, src, _, m = tiny_models_and_inputs()
    s = models.image_size
    rng = np.random.default_rng(3)
    u8 = {k: rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8) for k, n in (("pose", 9), ("exp", 4))}
    u8["exp"][2:] = u8["exp"][1]  # repeated frames: encoded once either way
    floats = {k: torch.from_numpy(align.ref_preprocess(v, size=s)) for k, v in u8.items()}
    pipe = Pipeline(models, batch_size=4)
    want = pipe.generate(src, m, pose=floats["pose"], exp=floats["exp"], eye=floats["pose"])
    want_encoded = pipe.last_encoded

    sizes = []
    real = align.ref_preprocess
    monkeypatch.setattr(align, "ref_preprocess", lambda x, size: sizes.append(len(x)) or real(x, size=size))
    lazy = {k: DriverFrames(v, s) for k, v in u8.items()}
    got = pipe.generate(src, m, pose=lazy["pose"], exp=lazy["exp"], eye=lazy["pose"], as_uint8=True)
    assert pipe.last_encoded == want_encoded
    assert got.dtype == np.uint8 and np.array_equal(got, to_uint8(want))
    assert sizes and max(sizes) <= pipe.batch_size
    panel_lazy = make_panel(src, got, [lazy["pose"], lazy["exp"], None], len(got))
    panel_float = make_panel(src, want, [floats["pose"], floats["exp"], None], len(got))
    assert np.array_equal(panel_lazy, panel_float)
    with pytest.raises(TypeError, match="slice"):
        lazy["pose"][0]
