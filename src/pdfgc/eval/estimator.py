"""Factor estimator: a small CNN that reads the synthetic ground-truth factors back from an image.

It is trained on renders of the synthetic *train* identities and evaluated on held-out *test* identities, then
used by the disentanglement benchmark to measure which factors a generated frame shows. Outputs per image:
pose (6: yaw, pitch, roll [rad], tx, ty, tz), gaze (2), eye_open (2), mouth (2), emotion intensity (1) and
emotion class logits (len(EMOTIONS)).

Cached on disk as one torch file (`save` / `load`): weights, target normalisation, the data spec it was trained
on and its own held-out accuracy.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pdfgc.fileio import atomic_path

# regression targets in output order: name -> width
REG_FACTORS = (("pose", 6), ("gaze", 2), ("eye_open", 2), ("mouth", 2), ("emotion_intensity", 1))
REG_DIM = sum(w for _, w in REG_FACTORS)
NUM_EMOTIONS = 5  # pdfgc.data.synthetic.EMOTIONS (neutral, happy, sad, angry, surprised)
ESTIMATOR_FORMAT = 1
DEFAULT_LOSS_WEIGHTS = {"gaze": 4.0}
# x0, y0, x1, y1 (fractions of the image) that hold both eyes of an aligned crop at every synthetic pose
EYE_BAND = (0.15, 0.04, 0.85, 0.44)
# the same for the mouth: where lips change between a closed narrow and an open wide mouth at every synthetic pose
# (rows 0.32-0.75, columns 0.21-0.79 of the crop in 99 % of frames), with a margin
MOUTH_BAND = (0.16, 0.30, 0.84, 0.80)


def _conv(i: int, o: int, k: int = 3, stride: int = 2) -> list[nn.Module]:
    return [nn.Conv2d(i, o, k, stride, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


class FactorEstimator(nn.Module):
    """`forward(x (B,3,S,S) in [-1,1]) -> dict(reg=(B,13) standardised, logits=(B,5))`; `predict` de-standardises.

    The image is resized to `image_size` first, so one estimator serves any input size. The last feature map is
    flattened, not pooled, because pose translation and gaze are positions.
    """

    def __init__(self, image_size: int = 56, width: int = 24, num_emotions: int = NUM_EMOTIONS,
                 eye_branch: bool = True, mouth_branch: bool = False, branch_channels: int | None = None):
        super().__init__()
        self.image_size = int(image_size)
        self.width = int(width)
        self.num_emotions = int(num_emotions)
        self.eye_branch = bool(eye_branch)
        self.mouth_branch = bool(mouth_branch)
        # channels of the eye / mouth branches' last layers (None: 2 * width, the original eye branch)
        self.branch_channels = None if branch_channels is None else int(branch_channels)
        w = self.width
        bc = 2 * w if self.branch_channels is None else self.branch_channels
        # one full-resolution layer keeps the few-pixel details (iris, lids, lips), then four stride-2 layers
        self.features = nn.Sequential(*_conv(3, w // 2, 5, 1), *_conv(w // 2, w), *_conv(w, 2 * w),
                                      *_conv(2 * w, 3 * w), *_conv(3 * w, 4 * w))
        side = self.image_size
        for _ in range(4):
            side = (side + 1) // 2
        feat = 4 * w * side * side
        if self.eye_branch:
            # gaze moves the iris by 1-2 pixels at 56 px: a branch over the eye band (where aligned crops put the
            # eyes, SPEC 1.3 template, at every pose of the synthetic data) that downsamples only twice
            self.eye = nn.Sequential(*_conv(3, w // 2, 3, 1), *_conv(w // 2, w, 3, 1), *_conv(w, bc),
                                     *_conv(bc, bc), nn.AdaptiveAvgPool2d((2, 4)))
            feat += bc * 8
        if self.mouth_branch:
            # mouth opening / width are a few pixels of lip outline: the same kind of branch over the mouth band
            self.mouth = nn.Sequential(*_conv(3, w // 2, 3, 1), *_conv(w // 2, w, 3, 1), *_conv(w, bc),
                                       *_conv(bc, bc), nn.AdaptiveAvgPool2d((2, 4)))
            feat += bc * 8
        self.head = nn.Sequential(nn.Linear(feat, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, REG_DIM + self.num_emotions))
        self.register_buffer("mean", torch.zeros(REG_DIM))
        self.register_buffer("std", torch.ones(REG_DIM))

    def forward(self, x: torch.Tensor) -> dict:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        h = self.features(x).flatten(1)
        if self.eye_branch:
            s = self.image_size
            x0, y0, x1, y1 = (round(v * s) for v in EYE_BAND)
            h = torch.cat([h, self.eye(x[:, :, y0:y1, x0:x1]).flatten(1)], dim=1)
        if self.mouth_branch:
            s = self.image_size
            x0, y0, x1, y1 = (round(v * s) for v in MOUTH_BAND)
            h = torch.cat([h, self.mouth(x[:, :, y0:y1, x0:x1]).flatten(1)], dim=1)
        out = self.head(h)
        return {"reg": out[:, :REG_DIM], "logits": out[:, REG_DIM:]}

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Factors of images `x` (B,3,S,S) in [-1,1]: dict of float32 arrays keyed like the ground truth
        (`pose` (B,6), `gaze`, `eye_open`, `mouth` (B,2), `emotion_intensity` (B,), `emotion` (B,) int64) plus
        `emotion_prob` (B, 5)."""
        self.eval()
        regs, probs = [], []
        dev = self.mean.device
        for s in range(0, len(x), batch_size):
            o = self(x[s:s + batch_size].to(dev).float())
            regs.append((o["reg"] * self.std + self.mean).cpu())
            probs.append(o["logits"].softmax(-1).cpu())
        reg = torch.cat(regs).numpy() if regs else np.zeros((0, REG_DIM), np.float32)
        prob = torch.cat(probs).numpy() if probs else np.zeros((0, self.num_emotions), np.float32)
        out, c = {}, 0
        for name, w in REG_FACTORS:
            out[name] = reg[:, c:c + w] if w > 1 else reg[:, c]
            c += w
        out["emotion_prob"] = prob
        out["emotion"] = prob.argmax(-1).astype(np.int64)
        return out


def _stack_targets(f: dict) -> np.ndarray:
    cols = []
    for name, w in REG_FACTORS:
        cols.append(np.asarray(f[name], np.float32).reshape(len(f[name]), w))
    return np.concatenate(cols, axis=1)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 `(N,S,S,3)` -> float `(N,3,S,S)` in [-1,1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def sample_frames(source, num_clips: int, frames_per_clip: int, seed: int = 0, progress: bool = False,
                  desc: str = "render") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render `frames_per_clip` random frames from each of the first `num_clips` clips of a ClipSource.

    Returns (uint8 (n,S,S,3), factors dict with leading axis n).
    """
    rng = np.random.default_rng(seed)
    clips = np.arange(min(num_clips, len(source)))
    imgs, facts = [], []
    it = clips
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(clips, desc=desc, unit="clip", leave=False)
    for c in it:
        n = source.num_frames(int(c))
        idx = np.sort(rng.choice(n, size=min(frames_per_clip, n), replace=False))
        imgs.append(source.frames(int(c), idx))
        facts.append(source.factors(int(c), idx))
    keys = facts[0].keys()
    return np.concatenate(imgs), {k: np.concatenate([f[k] for f in facts]) for k in keys}


def render_decorrelated(source, num_clips: int, frames_per_clip: int, seed: int = 0, progress: bool = False,
                        desc: str = "render", pool_clips: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Training renders whose factors are drawn independently of each other and of the identity.

    Natural clips hold one emotion (and similar gaze/pose) for many frames, so a CNN trained on them learns
    "which clip is this" instead of the factors (it overfits the train identities). Here a pool of natural
    ground-truth factor rows is gathered, and every render takes pose, gaze, eyes, mouth and emotion from five
    independent random rows (eye openness is half the time uniform in [0,1], since blinks are rare), rendered on
    clip `c`'s identity through `source.render(c, idx, **overrides)`. Falls back to `sample_frames` for sources
    without `render`. `pool_clips`: gather the pool of factor rows from only the first that many of the chosen
    clips (None: all; the rows of 1000 clips already span every factor, and each clip's trajectories cost time).
    Returns (uint8 (n,S,S,3), factors with keys pose, gaze, eye_open, mouth, emotion,
    emotion_intensity).
    """
    if not hasattr(source, "render"):
        return sample_frames(source, num_clips, frames_per_clip, seed, progress, desc)
    from pdfgc.data.synthetic import EMOTION_EXPR

    rng = np.random.default_rng(seed)
    clips = rng.permutation(len(source))[:num_clips]
    pool = [source.factors(int(c), np.arange(source.num_frames(int(c)))) for c in clips[:pool_clips]]
    pool = {k: np.concatenate([p[k] for p in pool]) for k in ("pose", "gaze", "eye_open", "mouth", "emotion",
                                                               "emotion_intensity")}
    m = len(pool["pose"])
    it = clips
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(clips, desc=desc, unit="clip", leave=False)
    imgs, facts = [], []
    for c in it:
        n = frames_per_clip
        f = {k: pool[k][rng.integers(0, m, n)] for k in ("pose", "gaze", "eye_open", "mouth")}
        e = rng.integers(0, m, n)
        f["emotion"], f["emotion_intensity"] = pool["emotion"][e], pool["emotion_intensity"][e]
        uni = rng.random(n) < 0.5
        f["eye_open"] = np.where(uni[:, None], rng.random((n, 1)).repeat(2, 1), f["eye_open"]).astype(np.float32)
        expr = EMOTION_EXPR[np.clip(f["emotion"], 0, len(EMOTION_EXPR) - 1)] * f["emotion_intensity"][:, None]
        idx = rng.integers(0, source.num_frames(int(c)), n)
        imgs.append(source.render(int(c), idx, pose=f["pose"], gaze=f["gaze"], eye_open=f["eye_open"],
                                  mouth=f["mouth"], expr=expr))
        facts.append(f)
    return np.concatenate(imgs), {k: np.concatenate([f[k] for f in facts]) for k in facts[0]}


def evaluate_estimator(est: FactorEstimator, frames: np.ndarray, factors: dict) -> dict:
    """Held-out accuracy of the estimator on frames with ground truth.

    Returns MAE per factor in natural units (pose rotation in degrees, `pose_t` in face-size units, gaze,
    eye_open, mouth, emotion intensity), `emotion_acc` (class accuracy) and `r2` per regression factor
    (1 - MSE / variance of the ground truth; 1 = perfect, 0 = predicting the mean).
    """
    pred = est.predict(to_tensor(frames))
    out: dict = {}
    rot_p = np.degrees(pred["pose"][:, :3])
    rot_g = np.degrees(np.asarray(factors["pose"])[:, :3])
    out["pose_deg_mae"] = float(np.mean(np.abs(rot_p - rot_g)))
    out["pose_t_mae"] = float(np.mean(np.abs(pred["pose"][:, 3:] - np.asarray(factors["pose"])[:, 3:])))
    for name in ("gaze", "eye_open", "mouth", "emotion_intensity"):
        out[f"{name}_mae"] = float(np.nanmean(np.abs(pred[name] - np.asarray(factors[name]))))
    out["emotion_acc"] = float(np.mean(pred["emotion"] == np.asarray(factors["emotion"])))
    r2 = {}
    for name, _ in REG_FACTORS:
        g = np.asarray(factors[name], np.float64)
        p = np.asarray(pred[name], np.float64)
        var = np.nanvar(g, axis=0)
        mse = np.nanmean((p - g) ** 2, axis=0)
        r2[name] = float(np.mean(1.0 - mse / np.maximum(var, 1e-12)))
    out["r2"] = r2
    out["num_frames"] = int(len(frames))
    return out


def photometric_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small per-image gain and per-channel offset (x in [-1, 1]) so the estimator reads geometry, not the renders'
    exact colours."""
    return (x * (1 + 0.1 * torch.randn(len(x), 1, 1, 1, generator=gen))
            + 0.1 * torch.randn(len(x), 3, 1, 1, generator=gen)).clamp(-1, 1)


def estimator_loss(est: "FactorEstimator", x: torch.Tensor, targets: torch.Tensor, classes: torch.Tensor,
                   reg_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, regression, classification): weighted MSE on the standardised regression targets (NaN targets
    skipped) + 0.5 x cross-entropy on the emotion class."""
    out = est(x)
    y = (targets - est.mean) / est.std
    mask = torch.isfinite(y)
    loss_reg = (((out["reg"] - y.nan_to_num()) ** 2) * mask * reg_w).sum() / (mask * reg_w).sum()
    loss_cls = F.cross_entropy(out["logits"], classes)
    return loss_reg + 0.5 * loss_cls, loss_reg, loss_cls


def train_estimator(train_source, test_source=None, steps: int = 1500, batch_size: int = 32, lr: float = 3e-3,
                    num_clips: int = 400, frames_per_clip: int = 16, width: int = 24, seed: int = 0,
                    test_clips: int = 80, eye_branch: bool = True, loss_weights: dict | None = None,
                    progress: bool = True,
                    log=print) -> FactorEstimator:
    """Train a `FactorEstimator` on renders of `train_source` (a synthetic ClipSource with ground truth).

    A fixed pool of `num_clips * frames_per_clip` frames is rendered once, then `steps` Adam steps of
    `batch_size` are taken (loss: MSE on standardised regression targets + cross-entropy on the emotion class).
    With `test_source`, the held-out accuracy (`evaluate_estimator`) is stored in `est.metrics`.
    """
    t0 = time.perf_counter()
    loss_weights = DEFAULT_LOSS_WEIGHTS if loss_weights is None else loss_weights
    gen = torch.Generator().manual_seed(seed)
    frames, facts = render_decorrelated(train_source, num_clips, frames_per_clip, seed=seed, progress=progress,
                                        desc="estimator: render train")
    x_all = to_tensor(frames)
    y_all = torch.from_numpy(_stack_targets(facts))
    cls_all = torch.from_numpy(np.asarray(facts["emotion"], np.int64))
    with torch.random.fork_rng():  # seeded initialisation without touching the caller's global RNG
        torch.manual_seed(seed)
        est = FactorEstimator(image_size=train_source.image_size, width=width, eye_branch=eye_branch)
    est.mean.copy_(y_all.nanmean(0) if hasattr(y_all, "nanmean") else y_all.mean(0))
    est.std.copy_(torch.from_numpy(np.nanstd(y_all.numpy(), axis=0)).clamp_min(1e-3))
    # per-output loss weights: the few-pixel factors (gaze) get more weight so they are not drowned by pose
    reg_w = torch.cat([torch.full((w,), float(loss_weights.get(name, 1.0))) for name, w in REG_FACTORS])
    opt = torch.optim.Adam(est.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    est.train()
    bar = range(steps)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="estimator: train", unit="step", leave=False)
    n = len(x_all)
    for _ in bar:
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        loss, loss_reg, loss_cls = estimator_loss(est, photometric_jitter(x_all[idx], gen), y_all[idx],
                                                  cls_all[idx], reg_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(reg=f"{loss_reg.item():.3f}", cls=f"{loss_cls.item():.3f}")
    est.eval()
    est.train_seconds = time.perf_counter() - t0
    est.metrics = {}
    if test_source is not None:
        # unseen identities, factors drawn independently (every factor spans its range, so R^2 is meaningful) ...
        tf, tfa = render_decorrelated(test_source, test_clips, 4, seed=seed + 1)
        est.metrics = evaluate_estimator(est, tf, tfa)
        # ... and natural frames (blinks are rare there: eye_open R^2 is dominated by a few closed eyes)
        tf, tfa = sample_frames(test_source, test_clips, 4, seed=seed + 2)
        est.metrics["natural"] = evaluate_estimator(est, tf, tfa)
    est.spec = dict(image_size=train_source.image_size, steps=steps, batch_size=batch_size, lr=lr,
                    num_clips=num_clips, frames_per_clip=frames_per_clip, width=width, seed=seed,
                    eye_branch=eye_branch,
                    data_seed=getattr(train_source, "seed", None))
    if log is not None:
        m = est.metrics
        if m:
            log(f"factor estimator trained in {est.train_seconds:.1f} s; held-out: pose {m['pose_deg_mae']:.2f} deg, "
                f"gaze {m['gaze_mae']:.3f}, eye_open {m['eye_open_mae']:.3f}, mouth {m['mouth_mae']:.3f}, "
                f"emotion acc {m['emotion_acc']:.2f}")
    return est


def _plain(obj):
    """Metrics and spec as plain Python values (numbers, strings, lists, dicts): what weights-only loading reads."""
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _arch(est: FactorEstimator) -> dict:
    return dict(image_size=est.image_size, width=est.width, num_emotions=est.num_emotions,
                eye_branch=est.eye_branch, mouth_branch=est.mouth_branch, branch_channels=est.branch_channels)


HALF_KEEP = ("mean", "std")  # target normalisation stays float32 in a half-precision file


def round_to_half(est: FactorEstimator) -> FactorEstimator:
    """Round the weights (not the target normalisation) to float16 precision in place: what a half-precision file
    holds, so that metrics measured after this describe the shipped weights exactly."""
    with torch.no_grad():
        for k, v in est.state_dict().items():
            if v.is_floating_point() and k not in HALF_KEEP:
                v.copy_(v.half().float())
    return est


def save_estimator(est: FactorEstimator, path, half: bool = False) -> Path:
    """Write the estimator (weights + spec + held-out metrics) atomically to `path`.

    A `.safetensors` path gets a safetensors file (tensors only; architecture, spec and metrics as JSON in its
    metadata): the shipped format; `half` stores its floating weights as float16 (half the size; loading returns
    float32, see `round_to_half`). Any other suffix gets a torch file of plain values that loads weights-only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        import json

        from safetensors.torch import save_file

        meta = dict(format=ESTIMATOR_FORMAT, **_arch(est), metrics=_plain(getattr(est, "metrics", {})),
                    spec=_plain(getattr(est, "spec", {})))
        tensors = {k: (v.half() if half and v.is_floating_point() and k not in HALF_KEEP else v).detach().cpu()
                   .contiguous() for k, v in est.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"pdfgc_estimator": json.dumps(meta)})
        return path
    blob = dict(format=ESTIMATOR_FORMAT, **_arch(est), state_dict=est.state_dict(),
                metrics=_plain(getattr(est, "metrics", {})), spec=_plain(getattr(est, "spec", {})))
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def _read_safetensors(path: Path) -> dict:
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"factor estimator {path}: not a readable safetensors file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if "pdfgc_estimator" not in meta:
        raise ValueError(f"factor estimator {path}: a safetensors file without pdfgc estimator metadata "
                         f"(not written by save_estimator)")
    try:
        blob = json.loads(meta["pdfgc_estimator"])
    except json.JSONDecodeError as e:
        raise ValueError(f"factor estimator {path}: its pdfgc_estimator metadata is not valid JSON") from e
    if not isinstance(blob, dict):
        raise ValueError(f"factor estimator {path}: its pdfgc_estimator metadata is not a JSON object")
    blob["state_dict"] = state
    return blob


def load_estimator(path, device: str | torch.device = "cpu") -> FactorEstimator:
    """Load an estimator written by `save_estimator` (safetensors, or a torch file read weights-only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"factor estimator {path}: no such file; run `python -m pdfgc.eval train-estimator "
                                f"--out {path}` (or `python -m pdfgc.eval synthetic ... --estimator {path}`) once "
                                f"to train and cache it")
    if path.suffix == ".safetensors":
        blob = _read_safetensors(path)
    else:
        try:  # weights only: an estimator file someone gave you cannot run code
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"factor estimator {path}: not a readable pdfgc estimator file (torch.load("
                             f"weights_only=True) failed: {type(e).__name__}); delete it to retrain, or pass "
                             f"another --estimator") from e
    if not isinstance(blob, dict) or blob.get("format") != ESTIMATOR_FORMAT:
        raise ValueError(f"factor estimator {path}: not a pdfgc estimator file (format "
                         f"{blob.get('format') if isinstance(blob, dict) else type(blob).__name__}, expected "
                         f"{ESTIMATOR_FORMAT}); delete it to retrain")
    try:
        est = FactorEstimator(int(blob["image_size"]), int(blob["width"]), int(blob["num_emotions"]),
                              bool(blob.get("eye_branch", False)), bool(blob.get("mouth_branch", False)),
                              blob.get("branch_channels"))
        est.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"factor estimator {path}: its weights do not fit the architecture it declares "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    est.metrics = blob.get("metrics", {})
    est.spec = blob.get("spec", {})
    return est.eval().to(device)


def chance_scale(values: np.ndarray, seed: int = 0, pairs: int = 4096) -> float:
    """Mean absolute difference between random pairs of rows of `values` (n, d): the error of a guess that
    ignores the input, used to normalise errors and movements of a factor (0 = exact, ~1 = chance)."""
    v = np.asarray(values, np.float64).reshape(len(values), -1)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(v), pairs)
    b = rng.integers(0, len(v), pairs)
    d = np.nanmean(np.abs(v[a] - v[b]))
    return float(d) if math.isfinite(d) and d > 0 else 1.0
