"""Stage datasets, augmentation and the batch contract on synthetic data (and a tiny in-memory ClipSource)."""
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from pdfgc.data import augment as aug
from pdfgc.data.contract import BatchContractError, expected_shapes, validate_batch
from pdfgc.data.sources import SubsetSource, audio_frame_range, empty_factors, identity_is_test
from pdfgc.data.stage_datasets import EyeDataset, LipDataset, PoseDataset, choose_offsets
from pdfgc.data.synthetic import SyntheticSource
from pdfgc.stages import STAGES


def build_stage_dataset(stage, source, num_offsets=5, window=5, **kw):
    """The dataset of registered stage `stage` (pdfgc.stages.STAGES) with its N / K options."""
    cls = STAGES[stage].DATASET
    opts = {"lip": {"num_offsets": num_offsets}, "emo": {"window": window}}.get(stage, {})
    return cls(source, **kw, **opts)


@pytest.fixture(scope="module")
def sources():
    return {s: SyntheticSource(image_size=s, num_identities=12, clips_per_identity=2, num_frames=40, seed=4)
            for s in (56, 224)}


def _batch(ds, indices):
    return default_collate([ds[i] for i in indices])


@pytest.mark.parametrize("size", [56, 224])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_batch_matches_contract(sources, stage, size):
    ds = build_stage_dataset(stage, sources[size], length=8, seed=1, image_size=size, num_offsets=3, window=5)
    b = _batch(ds, [0, 1])
    assert validate_batch(ds, b, size, num_offsets=3, window=5) == 2
    for k, shape in expected_shapes(ds, 2, size, 3, 5).items():
        assert tuple(b[k].shape) == shape
    assert b["identity"].dtype == torch.int64
    assert all(k in b for k in ("gt_pose", "gt_mouth", "gt_eye_open"))


def test_validate_batch_errors_name_the_problem():
    s = 56
    good = {"frames": torch.zeros(2, 3, s, s), "pose": torch.zeros(2, 6)}
    assert validate_batch(PoseDataset, good, s) == 2
    with pytest.raises(BatchContractError, match="lacks key.*pose"):
        validate_batch(PoseDataset, {"frames": good["frames"]}, s)
    with pytest.raises(BatchContractError, match="image size.*expected 64"):
        validate_batch(PoseDataset, good, 64)
    with pytest.raises(BatchContractError, match="batch size"):
        validate_batch(PoseDataset, {"frames": good["frames"], "pose": torch.zeros(3, 6)}, s)
    with pytest.raises(BatchContractError, match=r"\[-1.0, 1.0\]"):
        validate_batch(PoseDataset, {**good, "frames": good["frames"] + 2}, s)
    with pytest.raises(BatchContractError, match="float32"):
        validate_batch(PoseDataset, {**good, "frames": good["frames"].double()}, s)
    with pytest.raises(BatchContractError, match="num_offsets"):
        validate_batch(LipDataset, {"frames": torch.zeros(2, 4, 3, s, s), "mel": torch.zeros(2, 4, 1, 80, 20)}, s,
                       num_offsets=5)
    with pytest.raises(BatchContractError, match="dim 4.*expected 20"):
        validate_batch(LipDataset, {"frames": torch.zeros(2, 4, 3, s, s), "mel": torch.zeros(2, 4, 1, 80, 16)}, s)
    with pytest.raises(BatchContractError, match="declares no batch contract"):
        validate_batch("nope", good, s)
    with pytest.raises(BatchContractError, match="identity.*int64"):
        validate_batch(PoseDataset, {**good, "identity": torch.zeros(2, dtype=torch.int32)}, s)
    assert all(cls.DATASET.CONTRACT for cls in STAGES.values())  # every registered stage's data has a contract


def test_samples_are_deterministic_per_seed_and_index(sources):
    src = sources[56]
    a = build_stage_dataset("motion", src, length=4, seed=3)
    b = build_stage_dataset("motion", SyntheticSource(image_size=56, num_identities=12, clips_per_identity=2,
                                                      num_frames=40, seed=4), length=4, seed=3)
    for k, v in a[5].items():
        assert torch.equal(v, b[5][k]), k
    assert not torch.equal(a[5]["drv_aug"], a[6]["drv_aug"])
    c = build_stage_dataset("motion", src, length=4, seed=4)
    assert not torch.equal(a[5]["drv"], c[5]["drv"])
    # order independence: reading index 5 after other indices gives the same sample
    _ = a[0], a[9]
    assert torch.equal(a[5]["drv_aug"], b[5]["drv_aug"])


def test_lip_offsets_distinct_and_mel_synchronised(sources):
    src = sources[56]
    ds = LipDataset(src, length=4, seed=0, num_offsets=5, min_gap=5)
    for i in range(4):
        s = ds[i]
        idx = s["frame_idx"].numpy()
        clip = int(s["clip"])
        lo, hi = audio_frame_range(src.num_frames(clip), src.mel(clip).shape[0])
        assert (lo, hi) == (2, 39)  # 40 frames -> T_mel = 167 -> frames 2..38 own a window
        assert len(set(idx.tolist())) == 5 and idx.min() >= lo and idx.max() < hi
        assert np.diff(np.sort(idx)).min() >= 5
        mel = src.mel(clip)
        for n, f in enumerate(idx):  # hand slicing of the reference window: rows (f-2)*4 .. +20, transposed
            np.testing.assert_array_equal(s["mel"][n, 0].numpy(), mel[(f - 2) * 4:(f - 2) * 4 + 20].T)
        np.testing.assert_allclose(s["frames"][2].numpy(),
                                   src.frames(clip, [idx[2]])[0].transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)


def test_choose_offsets_properties():
    rng = np.random.default_rng(0)
    seen = np.zeros(20)
    for _ in range(300):
        o = choose_offsets(rng, 2, 22, 3, min_gap=4)
        assert len(o) == 3 and o.min() >= 2 and o.max() < 22 and np.diff(o).min() >= 4
        seen[o - 2] += 1
    assert (seen > 0).sum() == 20  # every frame can be drawn
    o = choose_offsets(rng, 0, 5, 5, min_gap=5)  # too short for the gap: falls back to distinct
    assert o.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot pick 6"):
        choose_offsets(rng, 0, 5, 6)


def test_eye_triplet_paste(sources):
    src = sources[56]
    ds = EyeDataset(src, length=4, seed=2, feather=0.04)
    s = ds[1]
    a, p, n = s["frame_idx"].tolist()
    assert len({a, p, n}) == 3
    clip = int(s["clip"])
    fa, fp = (src.frames(clip, [k])[0].transpose(2, 0, 1) / 127.5 - 1.0 for k in (a, p))
    x0, y0, x1, y1 = (s["paste_box"].numpy() * 56)
    anchor = s["anchor"].numpy()
    feather = 0.04 * 56
    # inside the box: P's pixels; farther than the feather from the box: A's pixels (up to uint8 rounding)
    inner = (slice(int(np.ceil(y0)), int(np.floor(y1))), slice(int(np.ceil(x0)), int(np.floor(x1))))
    np.testing.assert_allclose(anchor[(slice(None),) + inner], fp[(slice(None),) + inner], atol=1.5 / 127.5)
    far = np.ones((56, 56), bool)
    far[max(0, int(y0 - feather) - 1):int(y1 + feather) + 2, max(0, int(x0 - feather) - 1):int(x1 + feather) + 2] = 0
    np.testing.assert_allclose(anchor[:, far], fa[:, far], atol=1.5 / 127.5)
    fac = src.factors(clip, [p])
    np.testing.assert_array_equal(s["eye_open"].numpy(), fac["eye_open"][0])
    np.testing.assert_array_equal(s["gaze"].numpy(), fac["gaze"][0])
    # the box covers both frames' eyes
    ba, bp = src.factors(clip, [a])["eye_box"][0], fac["eye_box"][0]
    assert s["paste_box"][0] <= min(ba[0], bp[0]) and s["paste_box"][2] >= max(ba[2], bp[2])


def test_emo_window_consecutive_and_app_outside(sources):
    ds = build_stage_dataset("emo", sources[56], length=4, seed=0, window=5)
    for i in range(3):
        s = ds[i]
        idx = s["frame_idx"].numpy()
        assert np.array_equal(np.diff(idx), np.ones(4))
        assert int(s["app_idx"]) not in idx.tolist()
        assert idx.min() >= 2


def test_pose_target_is_ground_truth(sources):
    ds = build_stage_dataset("pose", sources[56], length=4, seed=0)
    s = ds[2]
    fac = sources[56].factors(int(s["clip"]), s["frame_idx"].tolist())
    np.testing.assert_array_equal(s["pose"].numpy(), fac["pose"][0])


def test_soft_box_mask_hand_values():
    m = aug.soft_box_mask(10, (0.2, 0.2, 0.6, 0.6), feather=2.0)
    # pixel centres 0.5..9.5; box [2, 6]; linear fade over 2 px outside
    expected_1d = np.array([0.25, 0.75, 1, 1, 1, 1, 0.75, 0.25, 0, 0])
    np.testing.assert_allclose(m, np.outer(expected_1d, expected_1d), atol=1e-6)
    dst = np.zeros((10, 10, 3), np.uint8)
    src = np.full((10, 10, 3), 200, np.uint8)
    out = aug.paste(dst, src, m)
    assert out[3, 3, 0] == 200 and out[9, 9, 0] == 0 and out[1, 3, 0] == 150


def test_augment_identity_when_disabled_and_changes_when_enabled():
    img = torch.rand(3, 32, 32) * 2 - 1
    off = aug.DrivingAugment(0, 0, 0, 0, 0, 0)
    assert torch.equal(off(img, np.random.default_rng(0)), img.clamp(-1, 1))
    on = aug.DrivingAugment()
    x = on(img, np.random.default_rng(0))
    y = on(img, np.random.default_rng(0))
    assert torch.equal(x, y) and x.shape == img.shape
    assert x.min() >= -1 and x.max() <= 1 and not torch.equal(x, img)
    # brightness only: factor f scales [0,1] intensities (torchvision adjust_brightness), drawn in [0.5, 1.5]
    r = np.random.default_rng(5)
    f = np.random.default_rng(5).uniform(0.5, 1.5)
    z = aug.colour_jitter(img, r, brightness=0.5, contrast=0, saturation=0, hue=0)
    np.testing.assert_allclose(z.numpy(), (((img + 1) / 2 * f).clamp(0, 1) * 2 - 1).numpy(), atol=1e-6)
    # the perspective corners move inwards by at most distortion x half size (torchvision RandomPerspective)
    start, end = aug.perspective_points(100, 100, 0.1, np.random.default_rng(1))
    for (sx, sy), (ex, ey) in zip(start, end):
        assert abs(sx - ex) <= 6 and abs(sy - ey) <= 6


def test_source_helpers():
    f = empty_factors(3)
    assert f["pose"].shape == (3, 6) and np.isnan(f["pose"]).all() and (f["emotion"] == -1).all()
    assert identity_is_test(5, 0.0) is False and identity_is_test(5, 1.0) is True
    assert audio_frame_range(100, 4 * 100 + 7) == (2, 99)  # T_mel//4 = 101 -> last valid frame 98
    assert audio_frame_range(100, 4 * 40 + 7) == (2, 39)
    src = SyntheticSource(image_size=56, num_identities=6, num_frames=20)
    sub = SubsetSource(src, [3, 1])
    assert len(sub) == 2 and sub.identity(0) == src.identity(3)
    np.testing.assert_array_equal(sub.frames(1, [4]), src.frames(1, [4]))


class _TinySource:
    """A ClipSource without ground truth (like real data): constant-grey frames, random mel, unknown factors."""

    image_size = 56

    def __len__(self):
        return 3

    def num_frames(self, i):
        return 30

    def identity(self, i):
        return 10 + i

    def frames(self, i, idx):
        return np.stack([np.full((56, 56, 3), 10 * i + int(k), np.uint8) for k in idx])

    def mel(self, i):
        return np.random.default_rng(i).uniform(0, 1, (4 * 30 + 7, 80)).astype(np.float32)

    def factors(self, i, idx):
        return empty_factors(len(idx))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_any_clip_source_without_ground_truth(stage):
    ds = build_stage_dataset(stage, _TinySource(), length=4, seed=0, num_offsets=4, window=3)
    b = _batch(ds, [0, 1, 2])
    validate_batch(ds, b, 56, num_offsets=4, window=3)
    if stage == "eye":
        assert torch.isnan(b["eye_open"]).all()
        assert np.allclose(b["paste_box"][0].numpy(), [0.28, 0.17, 0.72, 0.37])  # template box + margins


def test_eye_negative_is_the_most_different_candidate(sources):
    src = sources[56]
    hard = EyeDataset(src, length=4, seed=3, negative_candidates=6)
    plain = EyeDataset(src, length=4, seed=3, negative_candidates=1)
    d_hard, d_plain = [], []
    for i in range(40):
        for ds, out in ((hard, d_hard), (plain, d_plain)):
            s = ds[i]
            state = lambda o, g: np.concatenate([o.numpy(), g.numpy()])  # noqa: E731
            out.append(np.abs(state(s["gt_neg_eye_open"], s["gt_neg_gaze"]) - state(s["eye_open"], s["gaze"])).sum())
    # the hard negative's eye state is on average farther from P's than a random frame's
    assert np.mean(d_hard) > np.mean(d_plain) + 0.1, (np.mean(d_hard), np.mean(d_plain))
    # and it is the farthest of its candidates: recompute the choice by hand for one sample
    rng = np.random.default_rng([3, 7])
    i = int(rng.integers(len(src)))
    picks = rng.choice(np.arange(0, src.num_frames(i)), size=8, replace=False)
    f = src.factors(i, picks)
    state = np.concatenate([f["eye_open"], f["gaze"]], 1).astype(np.float64)
    expected = picks[2 + np.argmax(np.abs(state[2:] - state[1]).sum(1))]
    assert hard[7]["frame_idx"].tolist() == [picks[0], picks[1], expected]


def test_motion_appearance_frame_from_the_identity_comes_from_a_sibling_clip(sources):
    """`dataset.app_from=identity`: the appearance frame is a frame of some clip of the driver's identity (found by
    comparing with every frame of that identity's clips), and over a few samples some come from another clip than
    the driver's; the default (`clip`) always takes it from the driving clip."""
    from pdfgc.data.stage_datasets import AppearanceFrom, MotionDataset, MotionOptions, to_tensor_images

    src = sources[56]

    def origin(app, clips):
        for c in clips:
            frames = to_tensor_images(src.frames(c, np.arange(src.num_frames(c))))
            if any(torch.equal(app, f) for f in frames):
                return c
        return None

    for mode in (AppearanceFrom.identity, AppearanceFrom.clip):
        ds = MotionDataset(src, length=64, seed=3, image_size=56, options=MotionOptions(app_from=mode))
        other = 0
        for k in range(12):
            item = ds[k]
            clip = int(item["clip"])
            siblings = [c for c in range(len(src)) if src.identity(c) == src.identity(clip)]
            assert len(siblings) == 2
            c = origin(item["app"], siblings)
            assert c is not None, "the appearance frame is not a frame of the driver's identity"
            other += c != clip
        if mode is AppearanceFrom.identity:
            assert other > 0
        else:
            assert other == 0
