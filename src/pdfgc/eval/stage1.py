"""Stage-1 probe: does the unified-motion generator G0 carry each factor of a driver to another face?

The later stages can only make G render what G0 renders from the unified motion feature (the emo stage starts G
from G0, and `g0_transfer` maps the codes onto G0's motion input), so a weak G0 caps every control. This probe
reads G0's reenactments with the synthetic factor estimator and compares them with two baselines:

    G0, other identity   G0(E_app(source), E_mot(driver)) with source and driver of different test identities
    G0, same identity    the same with the source taken from the driver's own clip (stage 1's training task)
    copy source          the source frame itself (no transfer at all)
    copy driver          the driver frames (perfect transfer of motion, wrong identity)

    python -m pdfgc.eval stage1 --ckpt outputs/<run>/1_motion/checkpoints/last.ckpt --out eval_stage1/

Any stage checkpoint holding `generator0` works (later stages carry it); the EMA generator is used when present.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pdfgc.eval.benchmark import FACTORS, UNITS, _emotion_expr, factor_vectors, get_estimator, eval_samples
from pdfgc.eval.estimator import chance_scale, to_tensor
from pdfgc.eval.report import estimator_markdown

METHODS = ("g0_other_identity", "g0_same_identity", "copy_source", "copy_driver")
LABELS = {"g0_other_identity": "G0, other identity", "g0_same_identity": "G0, same identity",
          "copy_source": "copy source", "copy_driver": "copy driver"}


def load_stage1_networks(ckpt_path, device: str = "cpu"):
    """(appearance, motion, generator0, info) from a stage checkpoint, in eval mode; info says which generator
    weights were used. The checkpoint is read by `pdfgc.train.checkpoint` (weights only) and the networks are
    rebuilt from its model config through the allow-listed builder. Raises a UserError naming what is missing."""
    from pdfgc.train import checkpoint as ckpt_format

    ckpt = ckpt_format.read(ckpt_path)
    nets, used = [], {}
    for name in ("appearance", "motion", "generator0"):
        which, net = _network(ckpt, ckpt_path, name, prefer_ema=(name == "generator0"), device=device)
        nets.append(net)
        used[name] = which
    return (*nets, {"generator": used["generator0"], "stage": ckpt.stage, "iteration": ckpt.iteration})


def _network(ckpt, ckpt_path, name: str, prefer_ema: bool, device: str = "cpu"):
    """(which weights, network in eval mode) of component `name` of a read training checkpoint."""
    from pdfgc.models.config import build_component

    which, sd = ckpt.network(name, prefer_ema=prefer_ema)
    net = build_component(ckpt.model_config[name], source=f"{ckpt_path} [model.{name}]")
    net.load_state_dict(sd)
    return which, net.to(device).eval()


@torch.inference_mode()
def run_stage1_probe(ckpt, out_dir, estimator=None, clips: int = 8, frames: int = 16, data_seed: int = 0,
                     seed: int = 0, num_identities: int = 500, estimator_steps: int = 1500, estimator_clips: int = 400,
                     device: str = "cpu", progress: bool = True, log=print) -> dict:
    """Run the probe and write `report.json` and `report.md` to `out_dir`; returns the report.

    Errors per factor as in the synthetic benchmark (raw, and normalised by the factor's chance level: ~1 = chance,
    0 = follows the driver); PSNR/SSIM against the ground truth (the source identity rendered with the driver's
    factors; for "same identity" that is the driver frame itself)."""
    from pdfgc.eval.metrics import psnr_per_image, ssim_per_image
    from pdfgc.eval.report import md_table, write_json
    from pdfgc.fileio import atomic_write_text
    from pdfgc.pipeline.core import to_uint8

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    app, mot, g0, info = load_stage1_networks(ckpt, device)
    size = int(g0.config["image_size"])
    with torch.inference_mode(False), torch.enable_grad():  # training the estimator (no file given) needs autograd
        est, est_path = get_estimator(estimator, out_dir, size, data_seed=data_seed, seed=seed,
                                      num_identities=num_identities, steps=estimator_steps,
                                      num_clips=estimator_clips, progress=progress, log=log)
    src, samples, fidx = eval_samples(size, clips, frames, num_identities, data_seed, seed)

    def reenact(app_img, drv):
        f_app, f_sp = app(app_img.to(device))
        f_mot = mot.encode(drv.to(device), heads=())["motion"]
        style = torch.cat([f_app.expand(len(f_mot), -1), f_mot], dim=1)
        return g0(style, f_sp.expand(len(f_mot), -1, -1, -1), noise_mode="const").float().cpu()

    preds = {m: [] for m in METHODS}
    scores = {m: {"psnr": [], "ssim": []} for m in METHODS}
    gts = []
    it = samples
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(samples, desc="stage-1 probe", unit="sample")
    for s, d, _ in it:
        fd = src.factors(d, fidx)
        gts.append(fd)
        drv = to_tensor(src.frames(d, fidx))
        source = to_tensor(src.frames(s, [0]))
        target = src.render(s, np.zeros(frames, np.int64), pose=fd["pose"], eye_open=fd["eye_open"],
                            gaze=fd["gaze"], mouth=fd["mouth"], expr=_emotion_expr(fd))
        own_target = src.frames(d, fidx)
        outs = {"g0_other_identity": (reenact(source, drv), target),
                "g0_same_identity": (reenact(to_tensor(src.frames(d, [0])), drv), own_target),
                "copy_source": (source.expand(frames, -1, -1, -1), target),
                "copy_driver": (drv, target)}
        for m, (img, tgt) in outs.items():
            preds[m].append(est.predict(img))
            u8 = to_uint8(img)
            scores[m]["psnr"].append(psnr_per_image(u8, tgt))
            scores[m]["ssim"].append(ssim_per_image(u8, tgt))

    def cat(dicts):
        return {k: np.concatenate([x[k] for x in dicts]) for k in dicts[0]}

    gt = factor_vectors(cat(gts), predicted=False)
    scale = {f: chance_scale(gt[f], seed=seed) for f in FACTORS}
    errors = {}
    for m in METHODS:
        p = factor_vectors(cat(preds[m]), predicted=True)
        errors[m] = {f: {"err": float(np.nanmean(np.abs(p[f] - gt[f]))),
                         "nerr": float(np.nanmean(np.abs(p[f] - gt[f]))) / scale[f]} for f in FACTORS}
    image = {m: {k: float(np.mean(np.concatenate(v))) for k, v in sc.items()} for m, sc in scores.items()}
    report = {"probe": "pdfgc stage-1 generator (G0) factor transfer", "checkpoint": str(ckpt), "networks": info,
              "config": dict(clips=clips, frames=frames, image_size=size, data_seed=data_seed, seed=seed,
                             samples=[list(x) for x in samples]),
              "factors": list(FACTORS), "units": UNITS, "chance_scale": scale, "errors": errors,
              "image_vs_target": image,
              "estimator": {"path": str(est_path) if est_path else None, "held_out": getattr(est, "metrics", {})},
              "timing": {"total_s": time.perf_counter() - t0}}

    rows = [[LABELS[m]] + [f"{errors[m][f]['nerr']:.2f} ({errors[m][f]['err']:.3f})" for f in FACTORS]
            + [f"{image[m]['psnr']:.2f}", f"{image[m]['ssim']:.3f}"] for m in METHODS]
    md = [f"## Stage-1 probe: G0 factor transfer ({clips} samples x {frames} frames, {size} px, test identities)", "",
          f"Checkpoint `{ckpt}` (stage {info['stage']}, iteration {info['iteration']}, weights: {info['generator']}).",
          "Normalised error per factor (0 = follows the driver, ~1 = chance), raw error in brackets; PSNR/SSIM against "
          "the ground-truth render. G0 should approach copy-driver on the factors and beat copy-source; every "
          "control of the final model is capped by these numbers.", "",
          md_table(["method"] + [f"{f} ({UNITS[f]})" for f in FACTORS] + ["PSNR", "SSIM"], rows), ""]
    md += estimator_markdown(report["estimator"])
    files = {"json": str(write_json(report, out_dir / "report.json")),
             "markdown": str(atomic_write_text(out_dir / "report.md", "\n".join(md) + "\n"))}
    report["files"] = files
    if log:
        e = errors["g0_other_identity"]
        log(f"stage-1 probe: {clips} samples in {report['timing']['total_s']:.1f} s; G0 other identity: "
            + ", ".join(f"{f} {e[f]['nerr']:.2f}" for f in FACTORS) + f"; report in {out_dir}")
    return report


@torch.inference_mode()
def reconstruction_psnr(ckpt, batch, noise_mode: str = "const", device: str = "cpu") -> dict:
    """Stage 1's own task on given samples: PSNR (dB, per image then averaged) of G0(E_app(app), E_mot(drv))
    against `drv`, for the sampled generator (EMA when the checkpoint has one) and, beside it, the raw trained
    generator and copying the appearance frame. `batch`: a collated motion-stage batch (`app`, `drv` in [-1, 1]).
    This is what `debug=overfit` must drive up (issue 12 item 2: >= 30 dB on its 4 samples)."""
    from pdfgc.eval.metrics import psnr_per_image
    from pdfgc.pipeline.core import to_uint8
    from pdfgc.train import checkpoint as ckpt_format

    ck = ckpt_format.read(ckpt)
    app, mot, g_ema, g_raw = (_network(ck, ckpt, name, prefer_ema=ema, device=device)[1] for name, ema in
                              (("appearance", False), ("motion", False), ("generator0", True),
                               ("generator0", False)))
    a, d = batch["app"].to(device), batch["drv"].to(device)
    f_app, f_sp = app(a)
    f_mot = mot.trunk(d)
    style = torch.cat([f_app, f_mot], dim=1)
    ref = to_uint8(d)

    def score(img):
        return float(np.mean(psnr_per_image(to_uint8(img), ref)))

    return {"ema": score(g_ema(style, f_sp, noise_mode=noise_mode)),
            "raw": score(g_raw(style, f_sp, noise_mode=noise_mode)),
            "copy_app": score(a), "num_samples": int(len(a))}
