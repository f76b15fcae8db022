"""Image and landmark metrics: PSNR, SSIM, LPIPS, LMD / mouth-LMD.

Conventions: images are uint8 RGB arrays `(..., H, W, 3)` (or float arrays with an explicit `data_range`);
every function compares `pred` with `ref` of the same shape and returns one float averaged over the leading
(frame) axes. Per-frame values are available through the `*_per_image` variants.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# 68-point landmark indices (iBUG 300-W layout, 0-based): outer + inner lips.
MOUTH_POINTS = tuple(range(48, 68))

# SSIM constants of Wang et al. 2004, as used by skimage with gaussian_weights=True.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(pred, ref, name: str) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"{name}: pred and ref must have the same shape, got {pred.shape} vs {ref.shape}; "
                         "resize/crop the prediction to the reference first")
    if pred.ndim < 2:
        raise ValueError(f"{name}: expected images (..., H, W[, C]), got shape {pred.shape}")
    return pred, ref


def _data_range(x: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    if x.dtype == np.uint8:
        return 255.0
    raise ValueError(f"data_range is required for {x.dtype} images (uint8 -> 255 is the only implicit range)")


def psnr_per_image(pred, ref, data_range: float | None = None) -> np.ndarray:
    """PSNR in dB of each image. pred/ref: `(..., H, W, C)`; returns `(...)` float64; identical images -> inf."""
    pred, ref = _check_pair(pred, ref, "psnr")
    rng = _data_range(ref, data_range)
    if pred.ndim == 2:
        pred, ref = pred[..., None], ref[..., None]
    diff = pred.astype(np.float64) - ref.astype(np.float64)
    mse = np.mean(diff * diff, axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(rng * rng / mse)


def psnr(pred, ref, data_range: float | None = None) -> float:
    """Mean PSNR (dB) over frames; inf if every frame is identical (one identical frame makes the mean inf)."""
    return float(np.mean(psnr_per_image(pred, ref, data_range)))


def _gaussian_kernel1d(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    # Same support as scipy.ndimage.gaussian_filter: radius = int(truncate * sigma + 0.5), normalised to sum 1.
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim_per_image(pred, ref, data_range: float | None = None, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Gaussian-window SSIM (Wang et al. 2004) of each image, averaged over channels.

    Matches `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1, data_range=...)`: local statistics from an 11x11 Gaussian
    window, and the mean taken over the pixels whose window lies fully inside the image ("valid" region), so no
    border padding convention matters. pred/ref: `(..., H, W, C)` or `(H, W)`; H, W >= 11. Returns `(...)`.
    """
    pred, ref = _check_pair(pred, ref, "ssim")
    rng = _data_range(ref, data_range)
    squeeze_c = pred.ndim == 2
    if squeeze_c:
        pred, ref = pred[..., None], ref[..., None]
    lead = pred.shape[:-3]
    h, w, c = pred.shape[-3:]
    k = _gaussian_kernel1d(sigma)
    if h < len(k) or w < len(k):
        raise ValueError(f"ssim: images must be at least {len(k)}x{len(k)} pixels, got {h}x{w}")
    # (N*C, 1, H, W) float64: each channel is filtered independently.
    x = torch.from_numpy(pred.reshape(-1, h, w, c).astype(np.float64)).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    y = torch.from_numpy(ref.reshape(-1, h, w, c).astype(np.float64)).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    kt = torch.from_numpy(k)

    def blur(z):  # separable valid-mode Gaussian filter
        z = F.conv2d(z, kt.view(1, 1, -1, 1))
        return F.conv2d(z, kt.view(1, 1, 1, -1))

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1 = (SSIM_K1 * rng) ** 2
    c2 = (SSIM_K2 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    per_channel = s.mean(dim=(1, 2, 3)).reshape(-1, c)
    return per_channel.mean(dim=1).numpy().reshape(lead)


def ssim(pred, ref, data_range: float | None = None) -> float:
    """Mean gaussian-window SSIM over frames (see `ssim_per_image`), in [-1, 1]; 1 for identical images."""
    return float(np.mean(ssim_per_image(pred, ref, data_range)))


# ----------------------------------------------------------------------------------------------------------- LPIPS
class LPIPSMetric:
    """LPIPS (Zhang et al. 2018) through the `lpips` package, with the backbone weights read from a file.

    The package ships its linear calibration layers; the ImageNet backbone (torchvision AlexNet/VGG16/SqueezeNet
    1.1) would be downloaded by torchvision, which we never do. `backbone` is a path to either the torchvision
    state dict (e.g. `alexnet-owt-7be5be79.pth`, keys `features.N.*`) or an lpips-layout state dict
    (`sliceK.N.*`), or None together with `random_backbone=True` (tests, plumbing).
    """

    def __init__(self, backbone: str | Path | None = None, net: str = "alex", random_backbone: bool = False,
                 device: str | torch.device = "cpu"):
        if backbone is None and not random_backbone:
            raise FileNotFoundError(
                f"LPIPS needs the torchvision '{net}' ImageNet backbone weights as a file (no downloads here): pass "
                "--lpips-weights PATH (e.g. alexnet-owt-7be5be79.pth from "
                "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth copied from a machine with network)")
        if backbone is not None and not Path(backbone).is_file():
            raise FileNotFoundError(f"LPIPS backbone weights {backbone}: no such file; expected the torchvision "
                                    f"'{net}' state dict (e.g. alexnet-owt-7be5be79.pth)")
        import contextlib
        import io
        import warnings

        import lpips

        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # lpips prints its setup and
            warnings.simplefilter("ignore", UserWarning)  # uses torchvision's deprecated `pretrained=` argument
            self.model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        if backbone is not None:
            self._load_backbone(Path(backbone))
        self.model.eval().to(device)
        self.device = torch.device(device)

    def _load_backbone(self, path: Path) -> None:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        target = self.model.net.state_dict()
        new = {}
        for key in target:  # "sliceK.N.weight" <- "features.N.weight" (torchvision) or the key itself
            _, idx, param = key.split(".", 2)
            for cand in (key, f"net.{key}", f"features.{idx}.{param}"):
                if cand in sd:
                    new[key] = sd[cand]
                    break
            else:
                raise KeyError(f"LPIPS backbone {path}: missing key 'features.{idx}.{param}' (or '{key}'); is this "
                               f"the torchvision state dict of the right network? found keys like "
                               f"{list(sd)[:4]}")
            if tuple(new[key].shape) != tuple(target[key].shape):
                raise ValueError(f"LPIPS backbone {path}: key {key} has shape {tuple(new[key].shape)}, expected "
                                 f"{tuple(target[key].shape)}")
        self.model.net.load_state_dict(new)

    @torch.inference_mode()
    def per_image(self, pred, ref, batch_size: int = 16) -> np.ndarray:
        """LPIPS distance per image. pred/ref uint8 `(N, H, W, 3)` (or `(H, W, 3)`); returns `(N,)` (0 = same)."""
        pred, ref = _check_pair(pred, ref, "lpips")
        if pred.ndim == 3:
            pred, ref = pred[None], ref[None]
        out = []
        for s in range(0, len(pred), batch_size):
            a = torch.from_numpy(np.ascontiguousarray(pred[s:s + batch_size])).permute(0, 3, 1, 2).float()
            b = torch.from_numpy(np.ascontiguousarray(ref[s:s + batch_size])).permute(0, 3, 1, 2).float()
            a = (a / 127.5 - 1.0).to(self.device)
            b = (b / 127.5 - 1.0).to(self.device)
            out.append(self.model(a, b).flatten().cpu().double().numpy())
        return np.concatenate(out)

    def __call__(self, pred, ref) -> float:
        """Mean LPIPS over frames."""
        return float(np.mean(self.per_image(pred, ref)))


# ------------------------------------------------------------------------------------------------------------- LMD
def lmd_per_frame(pred_lm, ref_lm, points=None) -> np.ndarray:
    """Landmark distance per frame: mean Euclidean distance between corresponding points.

    pred_lm/ref_lm: `(T, 68, 2)` (or `(68, 2)`) in pixels; `points` selects a subset (e.g. `MOUTH_POINTS`).
    Frames where either side has NaN landmarks (no face found) give NaN. Returns `(T,)` in pixels.
    """
    a = np.asarray(pred_lm, dtype=np.float64)
    b = np.asarray(ref_lm, dtype=np.float64)
    if a.shape != b.shape or a.shape[-1] != 2:
        raise ValueError(f"lmd: landmarks must both be (T, P, 2), got {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    if points is not None:
        a, b = a[:, list(points)], b[:, list(points)]
    return np.linalg.norm(a - b, axis=-1).mean(axis=-1)


def lmd(pred_lm, ref_lm, points=None) -> float:
    """Mean landmark distance (pixels) over valid frames (NaN frames skipped); NaN if no frame is valid."""
    d = lmd_per_frame(pred_lm, ref_lm, points)
    d = d[np.isfinite(d)]
    return float(d.mean()) if len(d) else math.nan


def mouth_lmd(pred_lm, ref_lm) -> float:
    """Mouth LMD (M-LMD): `lmd` over the 20 lip points 48-67 of the 68-point layout, in pixels."""
    return lmd(pred_lm, ref_lm, MOUTH_POINTS)


def detect_landmarks(frames: np.ndarray, backend="dlib") -> np.ndarray:
    """68-point landmarks `(T, 68, 2)` in pixels (NaN rows where no face is found) via `pdfgc.data.landmarks`.

    frames: uint8 `(T, H, W, 3)` RGB; backend: a name for `pdfgc.data.landmarks.get_backend` or a backend object.
    Where several faces are found the first (the largest, in the backend's order) is used.
    """
    from pdfgc.data import landmarks as lmmod

    be = lmmod.get_backend(backend) if isinstance(backend, str) else backend
    out = np.full((len(frames), 68, 2), np.nan, np.float64)
    for i, img in enumerate(frames):
        faces = be.detect(np.ascontiguousarray(img))
        if faces:
            out[i] = faces[0]
    return out
