"""`run_inference(cfg)`: the function behind `python infer.py ...` (Hydra-free so that tests and other front-ends
can call it with a plain mapping)."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from pdfgc.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

REQUIRED = ("ckpt", "audio", "source")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": infer.py prints them in one line and exits 2 (no traceback)."""
    from pdfgc.data.video import MediaError

    types: list[type[BaseException]] = [PipelineError, MediaError, FileNotFoundError]
    for mod, name in (("pdfgc.data.audio", "AudioError"), ("pdfgc.data.align", "AlignmentError"),
                      ("pdfgc.models.checkpoint", "CheckpointError")):
        try:
            module = __import__(mod, fromlist=[name])
            types.append(getattr(module, name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _get(cfg: Mapping, key: str, default=None):
    v = cfg.get(key, default) if hasattr(cfg, "get") else default
    return default if v is None else v


def run_inference(cfg: Mapping) -> Path:
    """Run inference from a config mapping (keys of configs/infer.yaml) and write the mp4. Returns its path.

    Raises PipelineError (or another `user_error_types()` exception) for bad input, before any heavy work where
    it can be detected early (output folder, missing keys, controls, layout).
    """
    from pdfgc.pipeline import inputs
    from pdfgc.pipeline.controls import parse_controls
    from pdfgc.pipeline.core import Pipeline, check_precision, resolve_device

    missing = [k for k in REQUIRED if cfg.get(k) in (None, "", "???")]
    if missing:
        raise PipelineError(f"missing required setting(s): {', '.join(missing)}; e.g. python infer.py "
                            "ckpt=CHECKPOINT_DIR audio=speech.wav source=photo.jpg pose=video.mp4 exp=... eye=... "
                            "controls=[all] out=result.mp4")
    controls = cfg.get("controls")
    if controls is not None and not isinstance(controls, str):
        controls = list(controls)
    controls = parse_controls(controls)
    if str(_get(cfg, "noise_mode", "cached")) not in ("cached", "const", "none"):
        raise PipelineError(f"noise_mode: expected cached, const or none, got {cfg.get('noise_mode')!r}")
    layout = str(_get(cfg, "layout", "video"))
    if layout not in ("video", "panel"):
        raise PipelineError(f"layout: expected video or panel, got {layout!r}")
    device = resolve_device(_get(cfg, "device", "auto"))
    precision = check_precision(str(_get(cfg, "precision", "fp32")), device)  # before the checkpoint is loaded
    out = inputs.check_output_path(_get(cfg, "out", "result.mp4"))
    for key in ("audio", "source", "pose", "exp", "eye"):
        v = cfg.get(key)
        if v not in (None, "") and isinstance(v, str) and not Path(v).exists():
            raise PipelineError(f"{key}: {v} does not exist")

    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(str(cfg["ckpt"]), device=device,
                                    batch_size=int(_get(cfg, "batch_size", 8)),
                                    noise_mode=str(_get(cfg, "noise_mode", "cached")), precision=precision,
                                    **({"seed": int(cfg["seed"])} if cfg.get("seed") is not None else {}))
    t_load = time.perf_counter() - t0
    res = pipe(str(cfg["source"]), str(cfg["audio"]),
               pose=cfg.get("pose") or None, exp=cfg.get("exp") or None, eye=cfg.get("eye") or None,
               controls=controls, progress=bool(_get(cfg, "progress", True)),
               aligned=_get(cfg, "aligned", "auto"), landmarks=str(_get(cfg, "landmarks", "dlib")),
               landmark_weights=cfg.get("landmark_weights") or None, layout=layout,
               sync_fix=bool(_get(cfg, "sync_fix", False)), out=out)
    total = time.perf_counter() - t0
    gen = res.timings.get("total", 0.0)
    fps = res.num_frames / gen if gen > 0 else float("nan")
    frames = res.panel if layout == "panel" else res.frames
    print(f"pdfgc: wrote {out} | {res.num_frames} frames ({res.num_frames / res.fps:.2f} s at {res.fps:g} fps), "
          f"{frames.shape[2]}x{frames.shape[1]}, controls={','.join(res.controls) or 'none'} | "
          f"networks {gen:.1f} s = {fps:.2f} frames/s on {pipe.device} ({precision}), load {t_load:.1f} s, "
          f"total {total:.1f} s",
          flush=True)
    return out
