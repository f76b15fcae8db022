"""The demo task (`python train.py experiment=demo`, `make demo`): the whole progressive chain on the embedded
synthetic data (`pdfgc.train`), then what shows the result (`pdfgc.eval`, `pdfgc.pipeline`): a video with
swapped controls, the synthetic evaluation report and the stage-1 probe.

It sits above training and evaluation (docs/ARCHITECTURE.md): neither imports it. When a demo output fails, the
demo says so and goes on; the training results stay valid.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T,S,S,3) -> float (T,3,S,S) in [-1,1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


PANEL_LABELS = ("appearance (A)", "generated", "pose driver (C)", "expression driver (D)", "eye driver (E)")
MIN_PANEL = 224  # demo pictures are upscaled to at least this many pixels per panel


def viewable(panel: np.ndarray, labels=PANEL_LABELS, min_panel: int = MIN_PANEL, caption: str = "") -> np.ndarray:
    """Make 5-panel frames `(T, S, 5S, 3)` uint8 viewable as they are: each panel upscaled by an integer factor
    (nearest neighbour: the model's pixels stay visible, nothing is invented) to >= `min_panel` pixels, with a
    caption strip on top naming each panel (and an optional one-line `caption` under it). Returns uint8
    `(T, caption_h + S*f, 5*S*f, 3)`."""
    import cv2

    t, s, w, _ = panel.shape
    f = max(1, -(-min_panel // s))
    big = panel.repeat(f, axis=1).repeat(f, axis=2)
    pw = s * f
    lines = 2 if caption else 1
    strip = np.full((22 * lines + 6, big.shape[2], 3), 255, np.uint8)
    for k, label in enumerate(labels):
        cv2.putText(strip, label, (k * pw + 6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if caption:
        cv2.putText(strip, caption, (6, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    return np.concatenate([np.broadcast_to(strip, (t,) + strip.shape), big], axis=1)


def swapped_controls_video(export_dir, out_path, data_cfg: Mapping, num_frames: int = 50, seed: int = 0) -> Path:
    """Render a demo video from the export: appearance of test clip A, lips from the audio of clip B, head pose from
    clip C, expression from clip D, eyes from clip E (held-out synthetic identities), laid out as the reference's
    five panels [appearance | generated | pose | exp | eye] with B's audio muxed, upscaled and captioned
    (`viewable`). Also writes `<out>_still.png`: four frames of the video stacked. Returns the mp4 path."""
    from hydra.utils import instantiate

    from pdfgc.constants import FPS, SAMPLE_RATE
    from pdfgc.data.audio import mel_windows
    from pdfgc.data.video import write_video
    from pdfgc.models.latent import Controls
    from pdfgc.pipeline.core import Pipeline, make_panel

    pipe = Pipeline.from_pretrained(export_dir, device="cpu")
    src_cfg = dict(data_cfg.get("val_source") or data_cfg["train_source"])
    src_cfg["image_size"] = int(data_cfg["image_size"])
    source = instantiate(src_cfg)
    n_clips = len(source)
    rng = np.random.default_rng(seed)
    a, b, c, d, e = (int(i) for i in rng.choice(n_clips, size=min(5, n_clips), replace=n_clips < 5))
    t = min(num_frames + 4, *(source.num_frames(i) for i in (a, b, c, d, e)))
    app = _to_tensor(source.frames(a, [0]))
    mel = source.mel(b)
    frames_idx = np.arange(2, 2 + t - 4)
    mel_w = torch.from_numpy(mel_windows(mel, frames_idx)).float()
    drivers = [_to_tensor(source.frames(i, list(range(t)))) for i in (c, d, e)]
    with torch.no_grad():
        gen = pipe.generate(app, mel_w, pose=drivers[0], exp=drivers[1], eye=drivers[2], controls=Controls.all())
    panel = make_panel(app, gen, drivers, gen.shape[0])
    caption = "lips from the audio of clip B; pose, expression and eyes from clips C, D, E (held-out identities)"
    panel = viewable(panel, caption=caption)
    audio = None
    if hasattr(source, "audio"):
        wav = source.audio(b)
        audio = wav[: int(panel.shape[0] * SAMPLE_RATE / FPS)].astype(np.float32)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_video(out_path, panel, fps=FPS, audio=audio)
    import imageio.v3 as iio

    from pdfgc.fileio import atomic_path

    rows = np.linspace(0, panel.shape[0] - 1, 4).astype(int)
    head = panel.shape[1] - (panel.shape[2] // 5) * 1  # the caption strip height
    still = np.concatenate([panel[rows[0]]] + [panel[r][head:] for r in rows[1:]], axis=0)
    with atomic_path(out_path.with_name(out_path.stem + "_still.png")) as tmp:
        iio.imwrite(tmp, still, extension=".png")
    return out_path


def demo_outputs(export_dir, out_dir, data_cfg: Mapping, num_frames: int = 50, eval_clips: int = 4, seed: int = 0,
                 estimator_steps: int = 300, stage1_ckpt=None) -> dict:
    """Demo video + evaluation report under `out_dir` (+ the stage-1 probe of `stage1_ckpt` in `eval_stage1/`,
    with the report's estimator); returns {"video": path|None, "report": dict|None, "stage1": dict|None,
    "messages": [...], "seconds": {...}}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"video": None, "report": None, "stage1": None, "messages": [], "seconds": {}}
    t0 = time.perf_counter()
    try:
        result["video"] = swapped_controls_video(export_dir, out_dir / "swapped_controls.mp4", data_cfg,
                                                 num_frames=num_frames, seed=seed)
        log.info("demo video: %s", result["video"])
    except Exception as e:  # the demo must not lose a finished training run
        result["messages"].append(f"demo video failed: {type(e).__name__}: {e}")
    result["seconds"]["video"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        from pdfgc.eval.benchmark import run_synthetic_benchmark

        result["report"] = run_synthetic_benchmark(export_dir, out_dir / "eval", clips=eval_clips,
                                                   image_size=int(data_cfg["image_size"]), seed=seed,
                                                   estimator_steps=estimator_steps, progress=False, log=log.info)
        log.info("evaluation report: %s", out_dir / "eval")
    except Exception as e:
        result["messages"].append(f"evaluation report failed: {type(e).__name__}: {e}")
    result["seconds"]["eval"] = time.perf_counter() - t0
    if stage1_ckpt is not None and result["report"] is not None:
        t0 = time.perf_counter()
        try:
            from pdfgc.eval.stage1 import run_stage1_probe

            result["stage1"] = run_stage1_probe(stage1_ckpt, out_dir / "eval_stage1",
                                                estimator=result["report"]["estimator"]["path"] or None,
                                                clips=eval_clips,
                                                seed=seed, progress=False, log=log.info)
        except Exception as e:
            result["messages"].append(f"stage-1 probe failed: {type(e).__name__}: {e}")
        result["seconds"]["stage1_probe"] = time.perf_counter() - t0
    for m in result["messages"]:
        log.warning(m)
    return result


def run_demo(cfg) -> dict:
    """Train `cfg` (the demo chain) and write the demo outputs under `<output_dir>/demo`. Returns the training
    summary with "demo" added (see `demo_outputs`; None when the run produced no export)."""
    from omegaconf import OmegaConf

    from pdfgc.train import train

    summary = train(cfg)
    summary["demo"] = None
    demo_cfg = cfg.get("demo") or {}
    if summary["export"] is not None:
        summary["demo"] = demo_outputs(summary["export"], Path(str(cfg.paths.output_dir)) / "demo",
                                       OmegaConf.to_container(cfg.data, resolve=True),
                                       num_frames=int(demo_cfg.get("num_frames", 50)),
                                       eval_clips=int(demo_cfg.get("eval_clips", 4)), seed=int(cfg.seed),
                                       estimator_steps=int(demo_cfg.get("estimator_steps", 300)),
                                       stage1_ckpt=summary["checkpoints"].get("motion"))
    return summary
