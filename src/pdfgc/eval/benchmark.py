"""The synthetic disentanglement benchmark: control accuracy and cross-factor leakage against ground truth.

Setting (per test sample, all clips from the synthetic *test* identities, unseen in training):
- a source clip `s` (its frame 0 is the appearance image) and two driver clips `d`, `d2` of other identities;
- output frame i is driven by frame `i + 2` of the drivers (audio window of video frame i+2, and the pose / exp /
  eye driver frames i+2 with the reference's leading drop disabled), so every output frame has a ground truth;
- the ground-truth target is the source identity *rendered* with the driver's factors (the renderer accepts
  factor overrides), so PSNR/SSIM of a method against it measure identity and motion together.

Factors and the controls/drivers that own them (SPEC 1.7): mouth <- audio (`mouth`), pose <- pose driver
(`headpose`), gaze and blink <- eye driver (`gaze`, `blink`), emotion <- expression driver (`emo`). Each factor is
compared as a vector: mouth (opening, width), pose (yaw, pitch, roll in degrees), gaze (x, y), blink (eye_open L, R),
emotion (class probabilities x intensity; ground truth one-hot x intensity).

- control error of factor f: mean |estimate(generated frame) - ground truth(driver frame)| over frames and
  components, raw (in the units above) and normalised by the chance error of f (mean |difference| between random
  pairs of test frames): 0 = exact, ~1 = no better than ignoring the driver;
- leakage[r, c]: change only the driver of row factor r (d -> d2) and measure how much factor c moves in the
  output, in units of how much the estimator sees c move between the real driver frames d and d2 (so copying
  the changed driver scores 1 across the row); the ideal matrix is the identity (the diagonal = response). The
  gaze and blink rows swap the eye driver with the other eye control off (blink off for the gaze row, gaze off for
  the blink row), using the official control masks to isolate them;
- methods: the trained model (via `Pipeline.generate`), "copy source" (the source frame, no motion), "copy driver"
  (the pose driver's frame, no identity), and the model with each control switched off.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from pdfgc.eval.estimator import (FactorEstimator, chance_scale, load_estimator, save_estimator, to_tensor,
                                  train_estimator)

FACTORS = ("mouth", "pose", "gaze", "blink", "emotion")
CONTROL_OF = {"mouth": "mouth", "pose": "headpose", "gaze": "gaze", "blink": "blink", "emotion": "emo"}
ALL_CONTROLS = ("mouth", "headpose", "gaze", "blink", "emo")
UNITS = {"mouth": "[0,1] units", "pose": "degrees", "gaze": "[-1,1] units", "blink": "openness [0,1]",
         "emotion": "prob x intensity"}
METHODS = ("model", "copy_source", "copy_driver")


def factor_vectors(f: dict, predicted: bool) -> dict[str, np.ndarray]:
    """Per-factor comparison vectors `(n, d)` from estimator output (`predicted=True`) or ground truth."""
    n = len(f["pose"])
    pose = np.degrees(np.asarray(f["pose"], np.float64)[:, :3])
    intensity = np.asarray(f["emotion_intensity"], np.float64).reshape(n, 1)
    if predicted:
        emo = np.asarray(f["emotion_prob"], np.float64) * np.clip(intensity, 0, None)
    else:
        k = 5
        onehot = np.zeros((n, k))
        cls = np.asarray(f["emotion"], np.int64)
        ok = (cls >= 0) & (cls < k)
        onehot[np.arange(n)[ok], cls[ok]] = 1.0
        emo = onehot * intensity
    return {"mouth": np.asarray(f["mouth"], np.float64), "pose": pose,
            "gaze": np.asarray(f["gaze"], np.float64), "blink": np.asarray(f["eye_open"], np.float64),
            "emotion": emo}


def _as_pipeline(models_or_ckpt, device):
    from pdfgc.pipeline import Pipeline

    if isinstance(models_or_ckpt, Pipeline) or (hasattr(models_or_ckpt, "generate")
                                                 and hasattr(models_or_ckpt, "image_size")):
        return models_or_ckpt  # a Pipeline, or any object with its `generate` / `image_size` (tests, wrappers)
    if isinstance(models_or_ckpt, (str, Path)):
        return Pipeline.from_pretrained(models_or_ckpt, device=device)
    return Pipeline(models_or_ckpt, device=device)


def _controls_without(*names) -> list[str]:
    return [c for c in ALL_CONTROLS if c not in names]


def _emotion_expr(f: dict) -> np.ndarray:
    from pdfgc.data.synthetic import EMOTION_EXPR

    cls = np.clip(np.asarray(f["emotion"], np.int64), 0, len(EMOTION_EXPR) - 1)
    return EMOTION_EXPR[cls] * np.asarray(f["emotion_intensity"], np.float64)[:, None]


def _pick_samples(src, clips: int, rng) -> list[tuple[int, int, int]]:
    n = len(src)
    ids = np.array([src.identity(i) for i in range(n)])
    if len(np.unique(ids)) < 3:
        raise ValueError(f"synthetic benchmark: the test split holds {len(np.unique(ids))} identities, need >= 3; "
                         "raise num_identities")
    out = []
    for _ in range(clips):
        s = int(rng.integers(n))
        d = int(rng.choice(np.where(ids != ids[s])[0]))
        d2 = int(rng.choice(np.where((ids != ids[s]) & (ids != ids[d]))[0]))
        out.append((s, d, d2))
    return out


def eval_samples(size: int, clips: int, frames: int, num_identities: int = 500, data_seed: int = 0, seed: int = 0):
    """The evaluation's synthetic test clips: (source, [(source clip, driver clip, other driver clip)] x clips,
    driver frame indices 2..2+frames) -- test identities only, every clip identity different."""
    from pdfgc.data.synthetic import SyntheticSource

    src = SyntheticSource(image_size=size, num_identities=num_identities, clips_per_identity=2,
                          num_frames=frames + 5, split="test", seed=data_seed)
    return src, _pick_samples(src, clips, np.random.default_rng(seed)), np.arange(2, 2 + frames)


def get_estimator(estimator, out_dir, size: int, data_seed: int = 0, seed: int = 0, num_identities: int = 500,
                  steps: int = 1500, num_clips: int = 400, progress: bool = True, log=print):
    """The factor estimator for `size` px: `estimator` itself (a `FactorEstimator`), or loaded from the path
    `estimator` when that file exists, else trained on the synthetic train identities and saved there. With
    `estimator=None`: the shipped estimator for this size (`pdfgc/eval/assets/estimator_<size>.safetensors`,
    trained once by `python -m pdfgc.eval train-estimator`) when there is one and it was trained on this data seed,
    else `out_dir/estimator.pt` (loaded or trained). Returns (estimator on CPU in eval mode, path or None)."""
    from pdfgc.data.synthetic import SyntheticSource

    if isinstance(estimator, FactorEstimator):
        return estimator.to("cpu").eval(), None
    if estimator is None:
        from pdfgc.eval.instrument import shipped_path

        shipped = shipped_path(size)
        if shipped.is_file():
            est = load_estimator(shipped)
            if est.image_size == size and est.spec.get("data_seed", 0) == data_seed:
                if log:
                    log(f"factor estimator: shipped {shipped}")
                return est.to("cpu").eval(), shipped
    est_path = Path(estimator) if estimator is not None else Path(out_dir) / "estimator.pt"
    if est_path.is_file():
        est = load_estimator(est_path)
        if log:
            log(f"factor estimator: loaded {est_path}")
    else:
        def source(split):
            return SyntheticSource(image_size=size, num_identities=num_identities, clips_per_identity=2,
                                   num_frames=25, split=split, seed=data_seed)

        est = train_estimator(source("train"), source("test"), steps=steps, num_clips=num_clips, seed=seed,
                              progress=progress, log=log)
        save_estimator(est, est_path)
    return est.to("cpu").eval(), est_path


def run_synthetic_benchmark(models_or_ckpt, out_dir, estimator=None, clips: int = 8, frames: int = 16,
                            image_size: int | None = None, data_seed: int = 0, seed: int = 0,
                            num_identities: int = 500, lpips_weights=None, estimator_steps: int = 1500,
                            estimator_clips: int = 400, device: str = "cpu", progress: bool = True,
                            write: bool = True, log=print) -> dict:
    """Run the disentanglement benchmark and write `report.json`, `report.md` and `leakage.png` to `out_dir`.

    Args:
        models_or_ckpt: a `PDFGCModels`, a `Pipeline` (or an object with the same `generate` and
            `image_size`), or a checkpoint folder (official or pdfgc export).
        out_dir: output folder (created).
        estimator: a `FactorEstimator`, a path (loaded if it exists, else trained and saved there), or None
            (trained and saved as `out_dir/estimator.pt`).
        clips: test samples (source, driver, alternative driver); frames: output frames per sample.
        image_size: render size; default = the model's.
        data_seed: synthetic dataset seed (the train/test identity split depends on it; use the training one).
        lpips_weights: optional LPIPS backbone file; adds LPIPS against the ground-truth target.
        estimator_steps, estimator_clips: training budget when the estimator has to be trained.
    Returns the report dict (also written as JSON).
    """
    from pdfgc.data.audio import mel_windows

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = _as_pipeline(models_or_ckpt, device)
    size = int(image_size or pipe.image_size)
    if size != pipe.image_size:
        raise ValueError(f"synthetic benchmark: image_size {size} differs from the model's {pipe.image_size}; "
                         "omit --image-size to use the model's")

    est, est_path = get_estimator(estimator, out_dir, size, data_seed=data_seed, seed=seed,
                                  num_identities=num_identities, steps=estimator_steps, num_clips=estimator_clips,
                                  progress=progress, log=log)

    src, samples, fidx = eval_samples(size, clips, frames, num_identities, data_seed, seed)

    gens = ["all"] + [f"off_{c}" for c in ALL_CONTROLS] + [f"leak_{f}" for f in FACTORS]
    est_out: dict[str, dict[str, list]] = {m: {g: [] for g in gens} for m in METHODS}
    gt_d, gt_d2, real_d, real_d2 = [], [], [], []
    image_scores: dict[str, dict[str, list]] = {m: {"psnr": [], "ssim": [], "lpips": []} for m in METHODS}
    lp = None
    if lpips_weights is not None:
        from pdfgc.eval.metrics import LPIPSMetric

        lp = LPIPSMetric(lpips_weights)
    from pdfgc.eval.metrics import psnr_per_image, ssim_per_image
    from pdfgc.pipeline.core import to_uint8

    it = samples
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(samples, desc="synthetic benchmark", unit="sample")
    t_gen = 0.0
    for s, d, d2 in it:
        src_img = to_tensor(src.frames(s, [0]))
        fd, fd2 = src.factors(d, fidx), src.factors(d2, fidx)
        gt_d.append(fd)
        gt_d2.append(fd2)
        drv = to_tensor(src.frames(d, fidx))
        drv2 = to_tensor(src.frames(d2, fidx))
        mel = torch.from_numpy(mel_windows(src.mel(d), fidx))
        mel2 = torch.from_numpy(mel_windows(src.mel(d2), fidx))
        target = src.render(s, np.zeros(frames, np.int64), pose=fd["pose"], eye_open=fd["eye_open"],
                            gaze=fd["gaze"], mouth=fd["mouth"], expr=_emotion_expr(fd))
        real_d.append(drv)
        real_d2.append(drv2)

        # (controls, mel, pose, exp, eye) per generation
        plan = {"all": (list(ALL_CONTROLS), mel, drv, drv, drv)}
        for c in ALL_CONTROLS:
            plan[f"off_{c}"] = (_controls_without(c), mel, drv, drv, drv)
        plan["leak_mouth"] = (list(ALL_CONTROLS), mel2, drv, drv, drv)
        plan["leak_pose"] = (list(ALL_CONTROLS), mel, drv2, drv, drv)
        plan["leak_emotion"] = (list(ALL_CONTROLS), mel, drv, drv2, drv)
        plan["leak_gaze"] = (_controls_without("blink"), mel, drv, drv, drv2)
        plan["leak_blink"] = (_controls_without("gaze"), mel, drv, drv, drv2)

        for g, (ctrl, m, p, e, y) in plan.items():
            t0 = time.perf_counter()
            out = pipe.generate(src_img, m, pose=p, exp=e, eye=y, controls=ctrl, drop_leading=False)
            t_gen += time.perf_counter() - t0
            outs = {"model": out, "copy_source": src_img.expand(frames, -1, -1, -1), "copy_driver": p}
            for meth, o in outs.items():
                if meth != "model" and g.startswith("off_"):
                    continue  # baselines ignore controls: their "off" runs equal "all"
                est_out[meth][g].append(est.predict(o))
                if g == "all":
                    o8 = to_uint8(o)
                    image_scores[meth]["psnr"].append(psnr_per_image(o8, target))
                    image_scores[meth]["ssim"].append(ssim_per_image(o8, target))
                    if lp is not None:
                        image_scores[meth]["lpips"].append(lp.per_image(o8, target))

    # ---- aggregate
    def cat(dicts):
        return {k: np.concatenate([x[k] for x in dicts]) for k in dicts[0]}

    gt = factor_vectors(cat(gt_d), predicted=False)
    gt_all = factor_vectors(cat(gt_d + gt_d2), predicted=False)
    scale = {f: chance_scale(gt_all[f], seed=seed) for f in FACTORS}
    real_est = factor_vectors(est.predict(torch.cat(real_d)), predicted=True)
    real_est2 = factor_vectors(est.predict(torch.cat(real_d2)), predicted=True)
    # leakage unit: how much the estimator sees factor c move between the real driver frames d and d2, so a
    # method that copies the whole changed driver scores 1 in every column of that row, whatever the estimator's
    # accuracy (a weak estimator shrinks both numerator and denominator)
    move = {f: float(np.nanmean(np.abs(real_est[f] - real_est2[f]))) for f in FACTORS}
    move = {f: v if v > 1e-12 else 1.0 for f, v in move.items()}
    vec = {m: {g: factor_vectors(cat(v), predicted=True) for g, v in est_out[m].items() if v} for m in METHODS}
    gt_cls = cat(gt_d)["emotion"]

    def err(pred_vec, f):
        raw = float(np.nanmean(np.abs(pred_vec[f] - gt[f])))
        return {"err": raw, "nerr": raw / scale[f]}

    control = {m: {f: err(vec[m]["all"], f) for f in FACTORS} for m in METHODS}
    control["model_control_off"] = {f: err(vec["model"][f"off_{CONTROL_OF[f]}"], f) for f in FACTORS}
    control["estimator_on_driver"] = {f: err(real_est, f) for f in FACTORS}
    emo_acc = {m: float(np.mean(cat(est_out[m]["all"])["emotion"] == gt_cls)) for m in METHODS}
    emo_acc["model_control_off"] = float(np.mean(cat(est_out["model"]["off_emo"])["emotion"] == gt_cls))

    base_of = {"mouth": "all", "pose": "all", "emotion": "all", "gaze": "off_blink", "blink": "off_gaze"}
    leakage = {}
    for m in METHODS:
        mat = np.zeros((len(FACTORS), len(FACTORS)))
        for r, fr in enumerate(FACTORS):
            base = vec[m].get(base_of[fr], vec[m]["all"])
            moved = vec[m][f"leak_{fr}"]
            for c, fc in enumerate(FACTORS):
                mat[r, c] = float(np.nanmean(np.abs(moved[fc] - base[fc]))) / move[fc]
        leakage[m] = mat.tolist()

    def summary(mat):
        a = np.asarray(mat)
        off = a[~np.eye(len(a), dtype=bool)]
        return {"response": float(np.mean(np.diag(a))), "leakage": float(np.mean(off))}

    image = {}
    for m in METHODS:
        image[m] = {k: float(np.mean(np.concatenate(v))) for k, v in image_scores[m].items() if v}

    report = {
        "benchmark": "pdfgc synthetic disentanglement",
        "config": dict(clips=clips, frames=frames, image_size=size, data_seed=data_seed, seed=seed,
                       num_identities=num_identities, samples=[list(x) for x in samples]),
        "factors": list(FACTORS),
        "units": UNITS,
        "chance_scale": scale,
        "leakage_unit": move,
        "estimator": {"path": str(est_path) if est_path else None, "held_out": getattr(est, "metrics", {}),
                      "spec": getattr(est, "spec", {})},
        "control": control,
        "emotion_acc": emo_acc,
        "leakage": leakage,
        "leakage_summary": {m: summary(leakage[m]) for m in METHODS},
        "image_vs_target": image,
        "timing": {"total_s": time.perf_counter() - t_start, "generate_s": t_gen,
                   "generated_frames": clips * len(gens) * frames},
    }
    if write:
        from pdfgc.eval.report import write_synthetic_report

        report["files"] = write_synthetic_report(report, out_dir)
    if log:
        s = report["leakage_summary"]["model"]
        log(f"synthetic benchmark: {clips} samples x {frames} frames in {report['timing']['total_s']:.1f} s; model "
            f"response {s['response']:.2f}, leakage {s['leakage']:.2f}; report in {out_dir}")
    return report


def load_report(path) -> dict:
    """Read a `report.json` written by `run_synthetic_benchmark` or the videos command."""
    with open(path) as f:
        return json.load(f)

