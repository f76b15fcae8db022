"""The shipped factor estimator ("the instrument", issue 12 item 1): training, held-out accuracy, bars.

The synthetic benchmark reads every factor of a generated frame with a `FactorEstimator`. This module trains one
estimator once, on plenty of renders of the synthetic *train* identities (data are free), measures it on renders of
the benchmark's *test* identities with fixed definitions, and ships it as a small safetensors file
(`pdfgc/eval/assets/estimator_<S>.safetensors`) that the demo and `python -m pdfgc.eval synthetic|stage1` load
instead of training an estimator on every run. Reproduce the shipped file with

    python -m pdfgc.eval train-estimator --out src/pdfgc/eval/assets/estimator_56.safetensors

Held-out definitions (fixed before measuring; docs/training.md, experiment log, issue 12):

* frames: renders of the benchmark's test identities (`SyntheticSource(split="test", num_identities=500,
  seed=data_seed)`), never trained on; every factor re-drawn independently from those clips' natural factor rows
  (`render_decorrelated`), and natural frames reported beside them.
* R^2 = 1 - MSE / variance of the ground truth, per output column, averaged over the claimed columns.
* pose: yaw, pitch, roll (tx, ty, tz are reported, not claimed: a per-identity focal length and head height make a
  far head and a small head look alike).
* gaze: frames whose eyes are both at least half open (the iris is not visible in a closed eye).
* mouth: opening and width.
* emotion accuracy: frames that are neutral (class 0) or at intensity >= 0.4 (the weakest peak intensity the
  renderer gives an emotion; below it a face ramps in or out and looks neutral by construction); accuracy per
  intensity bin beside it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from pdfgc.eval.estimator import (REG_FACTORS, FactorEstimator, _stack_targets, estimator_loss, photometric_jitter,
                                  render_decorrelated, round_to_half, sample_frames, save_estimator, to_tensor)

# claimed factor -> bar (issue 12 item 1): R^2 for the regressions, class accuracy for emotion
BARS = {"pose": 0.9, "gaze": 0.9, "eye_open": 0.9, "mouth": 0.9, "emotion_acc": 0.9}
GAZE_MIN_OPEN = 0.5
EMOTION_CLEAR_INTENSITY = 0.4
INTENSITY_BINS = ((0.0, 0.0), (0.0, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.7), (0.7, 1.0))
TEST_IDENTITIES = 500  # the benchmark's identity pool (eval_samples / get_estimator); its test split is held out
ASSETS = Path(__file__).resolve().parent / "assets"


def shipped_path(image_size: int) -> Path:
    """Path of the shipped estimator for `image_size` px (it may not exist)."""
    return ASSETS / f"estimator_{int(image_size)}.safetensors"


def test_source(image_size: int, data_seed: int = 0, num_frames: int = 25):
    """The benchmark's held-out identities (about 99 identities x 2 clips at the default pool)."""
    from pdfgc.data.synthetic import SyntheticSource

    return SyntheticSource(image_size=image_size, num_identities=TEST_IDENTITIES, clips_per_identity=2,
                           num_frames=num_frames, split="test", seed=data_seed)


def heldout_sets(image_size: int, data_seed: int = 0, frames_per_clip: int = 8, natural_per_clip: int = 4,
                 clips: int | None = None, seed: int = 1234) -> dict:
    """{"redrawn": (frames, factors), "natural": (frames, factors)} on the test identities (seed fixed, not tuned)."""
    src = test_source(image_size, data_seed)
    n = len(src) if clips is None else min(int(clips), len(src))
    out = {"redrawn": render_decorrelated(src, n, frames_per_clip, seed=seed)}
    if natural_per_clip:
        out["natural"] = sample_frames(src, n, natural_per_clip, seed=seed + 1)
    return out


def _r2_cols(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    pred = np.asarray(pred, np.float64).reshape(len(pred), -1)
    gt = np.asarray(gt, np.float64).reshape(len(gt), -1)
    var = np.var(gt, axis=0)
    mse = np.mean((pred - gt) ** 2, axis=0)
    return 1.0 - mse / np.maximum(var, 1e-12)


def instrument_metrics(est: FactorEstimator, frames: np.ndarray, factors: dict) -> dict:
    """The claimed figures of one held-out set (definitions in the module docstring).

    Returns {"pose", "gaze", "eye_open", "mouth", "emotion_acc"} (the claims) plus the parts: per-column R^2 of pose
    (`pose_cols`: yaw, pitch, roll, tx, ty, tz), gaze (x, y), mouth (opening, width), `emotion_acc_all`,
    `emotion_acc_bins` ({"lo-hi": [acc, n]}), `emotion_intensity`, `num_frames`, `gaze_frames`, `emotion_frames`.
    """
    pred = est.predict(to_tensor(frames))
    g = {k: np.asarray(v) for k, v in factors.items()}
    out: dict = {"num_frames": int(len(frames))}
    pc = _r2_cols(pred["pose"], g["pose"])
    out["pose_cols"] = [float(v) for v in pc]
    out["pose"] = float(np.mean(pc[:3]))
    eo = g["eye_open"].reshape(len(frames), -1)
    open_ = eo.min(axis=1) >= GAZE_MIN_OPEN
    out["gaze_frames"] = int(open_.sum())
    gc = _r2_cols(pred["gaze"][open_], g["gaze"][open_]) if open_.sum() > 2 else np.full(2, np.nan)
    out["gaze_cols"] = [float(v) for v in gc]
    out["gaze"] = float(np.mean(gc))
    out["eye_open"] = float(np.mean(_r2_cols(pred["eye_open"], g["eye_open"])))
    mc = _r2_cols(pred["mouth"], g["mouth"])
    out["mouth_cols"] = [float(v) for v in mc]
    out["mouth"] = float(np.mean(mc))
    out["emotion_intensity"] = float(np.mean(_r2_cols(pred["emotion_intensity"], g["emotion_intensity"])))
    cls, inten = g["emotion"].astype(np.int64), g["emotion_intensity"].astype(np.float64)
    hit = pred["emotion"] == cls
    clear = (cls == 0) | (inten >= EMOTION_CLEAR_INTENSITY - 1e-9)
    out["emotion_frames"] = int(clear.sum())
    out["emotion_acc"] = float(hit[clear].mean()) if clear.any() else float("nan")
    out["emotion_acc_all"] = float(hit.mean())
    bins = {}
    for lo, hi in INTENSITY_BINS:
        sel = (inten <= 0.0) if hi == 0.0 else (inten > lo) & (inten <= hi)
        bins[f"{lo:g}-{hi:g}"] = [float(hit[sel].mean()) if sel.any() else None, int(sel.sum())]
    out["emotion_acc_bins"] = bins
    return out


def with_legacy_keys(m: dict) -> dict:
    """Held-out metrics {"redrawn", "natural"} plus the keys older readers use (`r2` per regression factor and
    `emotion_acc`, from the re-drawn set under this module's definitions)."""
    r = m["redrawn"]
    return dict(m, r2={"pose": r["pose"], "gaze": r["gaze"], "eye_open": r["eye_open"], "mouth": r["mouth"],
                       "emotion_intensity": r["emotion_intensity"]}, emotion_acc=r["emotion_acc"])


def bars_table(metrics: dict) -> list[tuple[str, float, float, bool]]:
    """[(claim, value, bar, met)] for the claims of one `instrument_metrics` result."""
    rows = []
    for k, bar in BARS.items():
        v = metrics.get(k)
        v = float("nan") if v is None else float(v)
        rows.append((k, v, bar, bool(math.isfinite(v) and v >= bar)))
    return rows


def render_training_set(image_size: int, ids: int, frames_per_id: int, data_seed: int = 0, seed: int = 0,
                        progress: bool = True) -> tuple[np.ndarray, dict]:
    """`ids` synthetic *train* identities (one clip each) x `frames_per_id` decorrelated renders, uint8 in memory."""
    from pdfgc.data.synthetic import SyntheticSource

    # the train split of a large pool; identities are assigned to test by a hash of (seed, id), so none of these
    # is one of the benchmark's test identities (test split of ids 0..499, same hash)
    pool = int(math.ceil(ids / 0.8 * 1.05)) + 50
    src = SyntheticSource(image_size=image_size, num_identities=pool, clips_per_identity=1, num_frames=25,
                          split="train", seed=data_seed, cache_clips=4)
    if len(src) < ids:
        raise ValueError(f"train-estimator: only {len(src)} train identities in a pool of {pool}")
    return render_decorrelated(src, ids, frames_per_id, seed=seed, progress=progress,
                               desc="estimator: render train", pool_clips=1000)


def train_instrument(image_size: int = 56, ids: int = 10000, frames_per_id: int = 8, steps: int = 14000,
                     batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 1e-4, width: int = 24,
                     branch_channels: int = 16, data_seed: int = 0, seed: int = 0,
                     loss_weights: dict | None = None, out=None, checkpoint_every: int = 1000,
                     heldout_frames_per_clip: int = 8, half: bool = True, progress: bool = True,
                     log=print) -> FactorEstimator:
    """Train the instrument (eye + mouth branches, AdamW, one-cycle lr) on renders held in memory.

    Every `checkpoint_every` steps (and at the end) the held-out figures are measured and, with `out`, the estimator
    is saved there (so a run stopped early leaves a usable file). `half`: the final weights are rounded to float16
    (`round_to_half`) before the last measurement and stored as float16 (a ~1.2 MB file). Returns the estimator with `.metrics`
    (held-out: "redrawn", "natural") and `.spec` (everything needed to reproduce it).
    """
    t0 = time.perf_counter()
    loss_weights = {"gaze": 4.0, "mouth": 3.0, "eye_open": 2.0} if loss_weights is None else loss_weights
    frames, facts = render_training_set(image_size, ids, frames_per_id, data_seed, seed, progress)
    t_render = time.perf_counter() - t0
    if log:
        log(f"rendered {len(frames)} training frames in {t_render:.0f} s")
    held = heldout_sets(image_size, data_seed, frames_per_clip=heldout_frames_per_clip)
    x_u8 = torch.from_numpy(np.ascontiguousarray(frames))  # (N,S,S,3) uint8: 4x smaller than float
    del frames
    y_all = torch.from_numpy(_stack_targets(facts))
    cls_all = torch.from_numpy(np.asarray(facts["emotion"], np.int64))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        est = FactorEstimator(image_size=image_size, width=width, eye_branch=True, mouth_branch=True,
                              branch_channels=branch_channels)
    est.mean.copy_(torch.from_numpy(np.nanmean(y_all.numpy(), axis=0)))
    est.std.copy_(torch.from_numpy(np.nanstd(y_all.numpy(), axis=0)).clamp_min(1e-3))
    reg_w = torch.cat([torch.full((w,), float(loss_weights.get(name, 1.0))) for name, w in REG_FACTORS])
    decay = [p for n_, p in est.named_parameters() if p.ndim > 1]
    no_decay = [p for n_, p in est.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    spec = dict(image_size=image_size, ids=ids, frames_per_id=frames_per_id, steps=steps, batch_size=batch_size,
                lr=lr, weight_decay=weight_decay, width=width, branch_channels=branch_channels,
                data_seed=data_seed, seed=seed, loss_weights=loss_weights, optimizer="AdamW one-cycle",
                heldout=f"test split of {TEST_IDENTITIES} identities, seed {data_seed}; "
                        f"{heldout_frames_per_clip} re-drawn + 4 natural frames per clip",
                render_seconds=round(t_render, 1), half=half)

    def measure(step, final=False):
        est.eval()
        if final and half:
            round_to_half(est)
        m = {k: instrument_metrics(est, f, fa) for k, f, fa in ((k, *v) for k, v in held.items())}
        est.metrics = with_legacy_keys(m)
        est.spec = dict(spec, steps_done=step, train_seconds=round(time.perf_counter() - t0, 1))
        if log:
            r = m["redrawn"]
            log(f"step {step}: held-out pose {r['pose']:.3f} gaze {r['gaze']:.3f} eye {r['eye_open']:.3f} "
                f"mouth {r['mouth']:.3f} (open {r['mouth_cols'][0]:.3f} width {r['mouth_cols'][1]:.3f}) "
                f"emotion {r['emotion_acc']:.3f} | natural mouth {m['natural']['mouth']:.3f}")
        if out is not None:
            save_estimator(est, out, half=final and half)
        est.train()

    est.train()
    bar = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="estimator: train", unit="step", mininterval=10)
    n = len(x_u8)
    for step in bar:
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        x = photometric_jitter(x_u8[idx].permute(0, 3, 1, 2).float().div(127.5).sub(1.0), gen)
        loss, loss_reg, loss_cls = estimator_loss(est, x, y_all[idx], cls_all[idx], reg_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and hasattr(bar, "set_postfix") and step % 50 == 0:
            bar.set_postfix(reg=f"{loss_reg.item():.3f}", cls=f"{loss_cls.item():.3f}")
        if (checkpoint_every and step % checkpoint_every == 0) or step == steps:
            measure(step, final=step == steps)
    est.eval()
    est.train_seconds = time.perf_counter() - t0
    return est
