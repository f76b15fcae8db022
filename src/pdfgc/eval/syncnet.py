"""SyncNet-style lip-sync expert (Chung & Zisserman, "Out of time", ACCV-W 2016) and LSE-C / LSE-D.

The architecture follows the public `syncnet_python` layout (module and parameter names `netcnnaud.*`,
`netfcaud.*`, `netcnnlip.*`, `netfclip.*`), so its released `syncnet_v2.model` state dict loads unchanged; the
weights always come from a path (never downloaded). Inputs, as that expert expects:

- video: 5 consecutive 224x224 face crops, BGR, float 0..255, as `(B, 3, 5, 224, 224)`;
- audio: 13 MFCCs (python_speech_features defaults: 25 ms / 10 ms, 26 filters, 512-point FFT, pre-emphasis 0.97,
  lifter 22, log-energy in c0) of int16-scaled 16 kHz audio, 20 MFCC frames (0.2 s) as `(B, 1, 13, 20)`.

LSE-D is the mean embedding distance at the best audio-video offset; LSE-C is the median over offsets minus that
minimum (larger = more confident sync); the offset search spans +-15 frames with zero-padded audio embeddings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pdfgc.constants import FPS, SAMPLE_RATE

SYNC_FRAMES = 5  # video frames per SyncNet window
SYNC_MFCC_PER_FRAME = 4  # 100 MFCC frames/s at 25 fps
SYNC_MFCC_WINDOW = SYNC_FRAMES * SYNC_MFCC_PER_FRAME  # 20
SYNC_SIZE = 224
SYNC_VSHIFT = 15  # offsets searched: -15..15 video frames
SYNC_EMBED = 1024


# ----------------------------------------------------------------------------------------------------------- MFCC
def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def _triangular_filterbank(n_filters: int, n_fft: int, sample_rate: int) -> np.ndarray:
    # Triangles on FFT-bin edges obtained by flooring mel-spaced frequencies (HTK-style formula, unit peak).
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_filters + 2)
    edges = np.floor((n_fft + 1) * _mel_to_hz(mels) / sample_rate)
    fb = np.zeros((n_filters, n_fft // 2 + 1))
    bins = np.arange(n_fft // 2 + 1)
    for j in range(n_filters):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        up = (bins >= lo) & (bins < mid)
        down = (bins >= mid) & (bins < hi)
        fb[j, up] = (bins[up] - lo) / (mid - lo)
        fb[j, down] = (hi - bins[down]) / (hi - mid)
    return fb


def mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, n_ceps: int = 13, n_filters: int = 26,
         n_fft: int = 512, win_s: float = 0.025, hop_s: float = 0.01, preemph: float = 0.97,
         lifter: int = 22) -> np.ndarray:
    """MFCCs as SyncNet was trained on (python_speech_features `mfcc` defaults).

    audio: float mono in [-1, 1] at `sample_rate` (scaled to int16 range inside, as the expert saw wav files read
    as int16). Returns `(T, n_ceps)` float64 at 100 frames/s; c0 is replaced by the log frame energy.
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1) * 32768.0
    x = np.concatenate([x[:1], x[1:] - preemph * x[:-1]])
    win = int(np.floor(win_s * sample_rate + 0.5))
    hop = int(np.floor(hop_s * sample_rate + 0.5))
    n = 1 if len(x) <= win else 1 + int(np.ceil((len(x) - win) / hop))
    x = np.pad(x, (0, (n - 1) * hop + win - len(x)))
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    frames = x[idx]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft
    eps = np.finfo(np.float64).eps
    energy = power.sum(1)
    energy = np.where(energy == 0, eps, energy)
    feat = power @ _triangular_filterbank(n_filters, n_fft, sample_rate).T
    feat = np.log(np.where(feat == 0, eps, feat))
    from scipy.fft import dct

    ceps = dct(feat, type=2, axis=1, norm="ortho")[:, :n_ceps]
    ceps = ceps * (1.0 + (lifter / 2.0) * np.sin(np.pi * np.arange(n_ceps) / lifter))
    ceps[:, 0] = np.log(energy)
    return ceps


# ---------------------------------------------------------------------------------------------------------- model
def _fc(embed: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, embed))


class SyncNet(nn.Module):
    """Two-tower audio-visual sync expert. `forward_aud((B,1,13,20)) -> (B,1024)`,
    `forward_lip((B,3,5,224,224)) -> (B,1024)` (BGR 0..255 face crops)."""

    def __init__(self, embed_dim: int = SYNC_EMBED):
        super().__init__()

        def c2(i, o, k=3, p=1):
            return [nn.Conv2d(i, o, k, 1, p), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        # audio: 13x20 MFCC -> 512x1x1 (time pooled with stride 2 once, frequency twice)
        self.netcnnaud = nn.Sequential(
            *c2(1, 64), nn.MaxPool2d(1, 1),
            *c2(64, 192), nn.MaxPool2d(3, (1, 2)),
            *c2(192, 384),
            *c2(384, 256),
            *c2(256, 256), nn.MaxPool2d(3, 2),
            *c2(256, 512, (5, 4), 0),
        )
        self.netfcaud = _fc(embed_dim)

        def c3(i, o, k, s=1, p=0):
            return [nn.Conv3d(i, o, k, s, p), nn.BatchNorm3d(o), nn.ReLU(inplace=True)]

        # video: 5x224x224 -> 512x1x1x1 (the first conv spans all 5 frames)
        self.netcnnlip = nn.Sequential(
            *c3(3, 96, (5, 7, 7), (1, 2, 2)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *c3(256, 256, (1, 3, 3), 1, (0, 1, 1)),
            *c3(256, 256, (1, 3, 3), 1, (0, 1, 1)),
            *c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *c3(256, 512, (1, 6, 6)),
        )
        self.netfclip = _fc(embed_dim)

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> "SyncNet":
        """Load `syncnet_v2.model` (a state dict with `netcnnaud.*`... keys); every key must match."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"SyncNet weights {path}: no such file. Get syncnet_v2.model from the syncnet_python project "
                "(joonson/syncnet_python, download_model.sh) on a machine with network and pass --syncnet PATH")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"SyncNet weights {path}: not a plain state dict ({type(e).__name__}: {e}); re-save it "
                             "with torch.save(model.state_dict(), path)") from e
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        sd = {k.removeprefix("__S__.").removeprefix("module."): v for k, v in sd.items()}
        net = cls()
        own = net.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        if missing or unexpected:
            raise KeyError(f"SyncNet weights {path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}; "
                           "expected the syncnet_python SyncNetModel layout")
        for k, v in own.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                raise ValueError(f"SyncNet weights {path}: {k} has shape {tuple(sd[k].shape)}, expected "
                                 f"{tuple(v.shape)}")
        net.load_state_dict(sd)
        return net.eval().to(device)


# ------------------------------------------------------------------------------------------------ offset search
def offset_distances(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = SYNC_VSHIFT) -> torch.Tensor:
    """Euclidean distance of every video window to the audio windows shifted by -vshift..vshift.

    video_emb, audio_emb: `(N, D)` window embeddings, window i of both starting at video frame i. The audio is
    zero-padded by `vshift` windows on both sides (padded positions compare with a zero vector, as the reference
    evaluation does). Returns `(2*vshift+1, N)`: row k is audio shifted by `k - vshift` frames.
    """
    n = video_emb.shape[0]
    a = F.pad(audio_emb, (0, 0, vshift, vshift))
    rows = []
    for k in range(2 * vshift + 1):
        rows.append(F.pairwise_distance(video_emb, a[k:k + n]))
    return torch.stack(rows)


def sync_scores(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = SYNC_VSHIFT) -> dict:
    """LSE-D / LSE-C and the A/V offset from window embeddings `(N, D)` (see `offset_distances`).

    Returns dict(offset=int frames (syncnet_python sign: video window i best matches audio window i - offset, so
    positive = the picture lags the sound),
    lse_d=float mean distance at the best offset, lse_c=float median(mean distances) - min, dists=(2v+1,) list).
    """
    d = offset_distances(video_emb.double(), audio_emb.double(), vshift).mean(dim=1)
    min_dist, idx = torch.min(d, dim=0)
    return dict(offset=int(vshift - idx.item()), lse_d=float(min_dist), lse_c=float(torch.median(d) - min_dist),
                dists=d.tolist())


def _video_tensor(frames: np.ndarray) -> torch.Tensor:
    # uint8 RGB (T,H,W,3) -> BGR float 0..255 (1,3,T,224,224), the expert's input convention
    x = torch.from_numpy(np.ascontiguousarray(frames[..., ::-1])).permute(3, 0, 1, 2).float()
    if x.shape[-1] != SYNC_SIZE or x.shape[-2] != SYNC_SIZE:
        x = F.interpolate(x, size=(SYNC_SIZE, SYNC_SIZE), mode="bilinear", align_corners=False)
    return x[None]


@torch.inference_mode()
def lse(net: SyncNet, frames: np.ndarray, audio: np.ndarray, fps: float = FPS, vshift: int = SYNC_VSHIFT,
        batch_size: int = 20, device: str | torch.device = "cpu") -> dict:
    """LSE-C / LSE-D of one video.

    frames: uint8 RGB `(T, H, W, 3)` face crops at 25 fps (resized to 224 inside); audio: float32 mono 16 kHz in
    [-1, 1], starting at the first frame. Returns `sync_scores(...)` plus `num_windows`.
    """
    if abs(fps - FPS) > 1e-3:
        raise ValueError(f"lse: SyncNet expects {FPS} fps video, got {fps}; resample with read_frames(fps={FPS})")
    feats = mfcc(audio)  # (T_a, 13)
    # windows as the reference evaluation counts them: whole 40 ms audio frames, 5 frames per window
    n = min(len(frames), len(audio) * FPS // SAMPLE_RATE) - SYNC_FRAMES
    if n < 1:
        raise ValueError(f"lse: need at least {SYNC_FRAMES + 1} frames of video and audio, got {len(frames)} frames "
                         f"and {len(audio) / SAMPLE_RATE:.2f} s of audio")
    cc = torch.from_numpy(feats.T.astype(np.float32))[None, None]  # (1,1,13,T_a)
    vid = _video_tensor(frames[: n + SYNC_FRAMES])
    ve, ae = [], []
    for s in range(0, n, batch_size):
        ids = range(s, min(n, s + batch_size))
        v = torch.cat([vid[:, :, i:i + SYNC_FRAMES] for i in ids]).to(device)
        a = torch.cat([cc[..., i * SYNC_MFCC_PER_FRAME:i * SYNC_MFCC_PER_FRAME + SYNC_MFCC_WINDOW] for i in ids])
        ve.append(net.forward_lip(v).cpu())
        ae.append(net.forward_aud(a.to(device)).cpu())
    out = sync_scores(torch.cat(ve), torch.cat(ae), vshift)
    out["num_windows"] = n
    return out
