"""Sample media (image grids, short videos, swap grids) written to whatever Lightning loggers are attached.

wandb gets `wandb.Image` / `wandb.Video` entries; CSV (and any logger with a `log_dir`) gets PNG/MP4 files under
`<log_dir>/media/`; TensorBoard gets `add_image` / `add_video`. Tensors are in [-1, 1]: images (3,H,W), videos
(T,3,H,W).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(...,3,H,W) in [-1,1] -> uint8 (...,H,W,3)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def image_grid(rows: Sequence[torch.Tensor], pad: int = 1) -> torch.Tensor:
    """rows: list of (N,3,H,W) tensors with equal N -> one image (3, R*(H+pad)-pad, N*(W+pad)-pad) in [-1,1],
    row r column c = rows[r][c]; padding is white."""
    r = len(rows)
    n, c, h, w = rows[0].shape
    out = torch.ones(c, r * (h + pad) - pad, n * (w + pad) - pad)
    for i, row in enumerate(rows):
        for j in range(n):
            out[:, i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = row[j].detach().float().cpu()
    return out


def swap_grid(sources: torch.Tensor, targets: torch.Tensor, cells: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Disentanglement at a glance: row 0 = [blank | targets], then per source row [source | result(source ->
    each target)]. sources (R,3,H,W) provide one factor; targets (C,3,H,W) provide everything else;
    cells (R,C,3,H,W). Returns (3, (R+1)*(H+pad)-pad, (C+1)*(W+pad)-pad)."""
    blank = torch.ones_like(targets[:1])
    rows = [torch.cat([blank, targets.cpu()], 0)]
    for i in range(sources.shape[0]):
        rows.append(torch.cat([sources[i:i + 1].cpu(), cells[i].cpu()], 0))
    return image_grid(rows, pad)


def _loggers(loggers) -> Iterable:
    if loggers is None:
        return []
    return loggers if isinstance(loggers, (list, tuple)) else [loggers]


def log_media(loggers, media: Mapping[str, torch.Tensor], step: int, stage: str = "", fps: int = 25) -> list[Path]:
    """Write every item of `media` to every logger; returns the files written (CSV-like loggers)."""
    written: list[Path] = []
    for lg in _loggers(loggers):
        kind = type(lg).__name__
        for name, x in media.items():
            key = f"samples/{stage}/{name}" if stage else f"samples/{name}"
            is_video = x.ndim == 4
            try:
                if kind == "WandbLogger":
                    import wandb

                    if is_video:
                        path = _write_file(Path(lg.experiment.dir) / "media", stage, name, step, x, fps)
                        lg.experiment.log({key: wandb.Video(str(path), format="mp4")}, commit=False)
                    else:
                        lg.experiment.log({key: wandb.Image(to_uint8(x))}, commit=False)
                elif kind == "TensorBoardLogger":
                    exp = lg.experiment
                    if is_video:
                        exp.add_video(key, ((x[None] + 1) / 2).clamp(0, 1).cpu(), step, fps=fps)
                    else:
                        exp.add_image(key, ((x + 1) / 2).clamp(0, 1).cpu(), step)
                elif getattr(lg, "log_dir", None):
                    written.append(_write_file(Path(lg.log_dir) / "media", stage, name, step, x, fps))
            except Exception as e:  # media must never kill a training run
                log.warning("could not log media %s to %s: %s: %s", key, kind, type(e).__name__, e)
    return written


def _write_file(folder: Path, stage: str, name: str, step: int, x: torch.Tensor, fps: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{stage}_{name}_{step:07d}" if stage else f"{name}_{step:07d}"
    if x.ndim == 4:
        from pdfgc.data.video import write_video

        path = folder / f"{stem}.mp4"
        frames = to_uint8(x)
        # H.264 with yuv420p needs even sides
        h, w = frames.shape[1:3]
        frames = frames[:, : h - h % 2, : w - w % 2]
        write_video(path, frames, fps=fps)
        return path
    from PIL import Image

    path = folder / f"{stem}.png"
    Image.fromarray(to_uint8(x)).save(path)
    return path
