"""Evaluate a folder of generated videos against a folder of references (matched by file name stem).

Per pair: PSNR, SSIM (always), LPIPS (with backbone weights), CSIM (dlib by default, or a TorchScript embedding
network), LMD / M-LMD (68-point landmarks), LSE-C / LSE-D (SyncNet weights; audio from the generated video, else
from the reference). Frames are read at 25 fps, the two videos are cut to the shorter one, and predictions are
resized to the reference size when they differ.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from pdfgc.data.video import VIDEO_EXTENSIONS, MediaError, read_audio, read_frames


def match_videos(pred_dir, ref_dir) -> list[tuple[str, Path, Path]]:
    """Pairs (name, pred, ref) of videos with the same stem in both folders; errors if none match."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for d, what in ((pred_dir, "--pred"), (ref_dir, "--ref")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} {d}: not a folder of videos")

    def index(d):
        return {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS}

    preds, refs = index(pred_dir), index(ref_dir)
    names = sorted(set(preds) & set(refs))
    if not names:
        raise FileNotFoundError(f"no video names in common between {pred_dir} ({len(preds)} videos: "
                                f"{sorted(preds)[:3]}) and {ref_dir} ({len(refs)} videos: {sorted(refs)[:3]}); "
                                "videos are matched by file name without extension")
    return [(n, preds[n], refs[n]) for n in names]


def _resize_to(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    if frames.shape[1:3] == (h, w):
        return frames
    import cv2

    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def evaluate_videos(pred_dir, ref_dir, out_dir=None, lpips_weights=None, lpips_net: str = "alex",
                    syncnet=None, csim: str | None = "dlib", lmd: bool = True, landmarks: str = "dlib",
                    stride: int = 1, max_frames: int | None = None, device: str = "cpu",
                    progress: bool = True, log=print) -> dict:
    """Metrics for every generated/reference video pair; writes `report.json` and `report.md` to `out_dir`.

    Args:
        lpips_weights: LPIPS backbone file (torchvision state dict); None skips LPIPS.
        syncnet: SyncNet weights (`syncnet_v2.model`); None skips LSE-C/LSE-D.
        csim: "dlib" (offline default), a TorchScript embedding file, or None to skip.
        lmd: compute LMD / M-LMD with the `landmarks` backend of `pdfgc.data.landmarks`.
        stride: use every `stride`-th frame for CSIM and LMD (they are the slow metrics).
        max_frames: cut every video to this many frames.
    Returns dict(metrics=[names], mean={name: value}, videos=[{name, frames, metric: value}], num_videos).
    """
    from pdfgc.eval import metrics as M

    pairs = match_videos(pred_dir, ref_dir)
    lp = M.LPIPSMetric(lpips_weights, net=lpips_net, device=device) if lpips_weights is not None else None
    sync = None
    if syncnet is not None:
        from pdfgc.eval.syncnet import SyncNet

        sync = SyncNet.from_file(syncnet, device=device)
    emb = None
    if csim == "dlib":
        from pdfgc.eval.identity import DlibEmbedder

        emb = DlibEmbedder()
    elif csim:
        from pdfgc.eval.identity import TorchEmbedder

        emb = TorchEmbedder(csim, device=device)
    lm_backend = None
    if lmd:
        from pdfgc.data.landmarks import get_backend

        lm_backend = get_backend(landmarks)

    t0 = time.perf_counter()
    rows = []
    it = pairs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(pairs, desc="evaluate videos", unit="video")
    for name, pp, rp in it:
        row: dict = {"name": name}
        try:
            pf, _ = read_frames(pp)
            rf, _ = read_frames(rp)
        except MediaError as e:
            row["error"] = str(e)
            rows.append(row)
            continue
        n = min(len(pf), len(rf), max_frames or 10 ** 9)
        pf, rf = pf[:n], rf[:n]
        pf = _resize_to(pf, rf.shape[1], rf.shape[2])
        row["frames"] = n
        row["psnr"] = M.psnr(pf, rf)
        row["ssim"] = M.ssim(pf, rf)
        if lp is not None:
            row["lpips"] = lp(pf, rf)
        sub = slice(0, n, max(1, stride))
        if emb is not None:
            from pdfgc.eval.identity import csim_per_frame

            row["csim"] = float(np.mean(csim_per_frame(emb, pf[sub], rf[sub])))
        if lm_backend is not None:
            lp_ = M.detect_landmarks(pf[sub], lm_backend)
            lr_ = M.detect_landmarks(rf[sub], lm_backend)
            row["lmd"] = M.lmd(lp_, lr_)
            row["mlmd"] = M.mouth_lmd(lp_, lr_)
            row["landmark_frames"] = int(np.sum(np.isfinite(lp_).all((1, 2)) & np.isfinite(lr_).all((1, 2))))
        if sync is not None:
            from pdfgc.eval.syncnet import lse

            try:
                audio = read_audio(pp)
            except MediaError:
                audio = read_audio(rp)
            s = lse(sync, pf, audio, device=device)
            row.update(lse_c=s["lse_c"], lse_d=s["lse_d"], av_offset=s["offset"])
        rows.append(row)

    names = [k for k in ("psnr", "ssim", "lpips", "csim", "lmd", "mlmd", "lse_c", "lse_d", "av_offset")
             if any(k in r for r in rows)]
    mean = {}
    for k in names:
        vals = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        mean[k] = float(np.mean(vals)) if k != "psnr" or len(finite) == len(vals) else float(np.mean(finite))
    report = {"pred": str(pred_dir), "ref": str(ref_dir), "num_videos": len(rows), "metrics": names, "mean": mean,
              "videos": rows, "seconds": time.perf_counter() - t0,
              "failed": [r["name"] for r in rows if "error" in r]}
    if any(math.isinf(r.get("psnr", 0.0)) for r in rows):
        report["note"] = "PSNR mean excludes videos identical to their reference (PSNR inf)"
    if out_dir is not None:
        from pdfgc.eval.report import _atomic_text, videos_markdown, write_json

        out_dir = Path(out_dir)
        write_json(report, out_dir / "report.json")
        _atomic_text(out_dir / "report.md", videos_markdown(report))
        report["files"] = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md")}
    if log:
        log("video evaluation: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    return report
