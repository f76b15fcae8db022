"""Procedural talking faces with ground-truth factors: the embedded default dataset (`data=synthetic`).

`SyntheticSource` implements `pdfgc.data.sources.ClipSource` with no files and no downloads. Every clip is a pure
function of `(seed, identity, clip number)`; every frame a pure function of the clip and the frame index, so frames
are rendered lazily (`frames(i, idx)` renders only `idx`) and identically in any process or DataLoader worker.

What a clip holds
-----------------
* identity (per identity id): head ellipsoid radii, eye spacing/size, brow height/thickness, nose and mouth sizes,
  lip thickness, hairline, hair volume/length, skin / hair / iris / lip / shirt / background colours;
* a 16 kHz speech-like audio track: words of 1-4 syllables separated by pauses; each syllable is one of five
  vowels (a e i o u) rendered as a glottal pulse train (pitch contour around an identity-specific f0) through three
  formant resonators, with attack/release amplitude envelopes and a short noise burst (consonant) at onset;
* mouth (opening, width) per video frame from the syllable plan: opening = envelope x vowel openness, width = vowel
  spreading / rounding (so width is decodable only from the spectrum, not from loudness);
* head pose (yaw, pitch, roll, tx, ty, tz), gaze (x, y), blinks (per eye) and emotion (class + intensity), each from
  its own random stream: smooth, independent of each other and of the audio.

Rendering
---------
A pinhole camera looks at a textured head ellipsoid: every pixel is ray-cast onto the ellipsoid, features (eyes,
lids, irises, brows, nose, lips, teeth, hairline) are drawn in head-surface coordinates, so yaw/pitch/roll act as a
true 3D rotation with perspective; silhouettes (head, back hair) are the exact projected conics. Edges are
anti-aliased analytically (signed distance / pixel footprint), no supersampling. The per-pixel kernel is compiled
with numba (a dependency of librosa) and cached on disk; frames are uint8 RGB.

Conventions (docs/ARCHITECTURE.md): `pose` = yaw, pitch, roll [rad] (yaw > 0: the face turns towards the image's
right; pitch > 0: the face looks up; roll > 0: clockwise in the image), tx, ty (head-centre shift in units of the
head half-width, +x right, +y down), tz (relative change of the camera distance, > 0 farther); `eye_open` = (image-
left eye, image-right eye) lid openness from blinks in [0,1] (emotional squint/widening is part of the emotion);
`gaze` in [-1,1] (+x towards the image's right, +y down); `mouth` = (opening, width) in [0,1];
`emotion` in `EMOTIONS` order (0 neutral, intensity 0); boxes in [0,1] image coordinates.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Sequence

import numpy as np

from pdfgc.constants import FPS, SAMPLE_RATE
from pdfgc.data.sources import identity_is_test

log = logging.getLogger(__name__)

EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised")
VOWELS = ("a", "e", "i", "o", "u")
# first three formants (Hz) of an adult male voice (Peterson & Barney style averages)
VOWEL_FORMANTS = np.array([[730.0, 1090.0, 2440.0],
                           [530.0, 1840.0, 2480.0],
                           [270.0, 2290.0, 3010.0],
                           [570.0, 840.0, 2410.0],
                           [300.0, 870.0, 2240.0]])
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])
# mouth shape per vowel: (opening at full loudness, width); rest width is 0.5
VOWEL_MOUTH = np.array([[1.00, 0.55],
                        [0.60, 0.85],
                        [0.28, 1.00],
                        [0.72, 0.22],
                        [0.32, 0.02]])
REST_WIDTH = 0.5
MOUTH_TO_FACE = 0.245  # identity mouth rest half-width / head half-width (make_identity)
# expression parameters per emotion at intensity 1: smile, brow inner raise, brow outer raise, squint, widen
EMOTION_EXPR = np.array([[0.0, 0.0, 0.0, 0.0, 0.0],
                         [1.0, 0.10, 0.10, 0.45, 0.0],
                         [-0.7, 0.55, -0.20, 0.10, 0.0],
                         [-0.35, -0.55, 0.20, 0.40, 0.0],
                         [0.0, 0.75, 0.65, 0.0, 0.55]])

# ---- identity parameter layout (indices into the identity vector passed to the kernel) ----
(I_A, I_B, I_C, I_EX, I_EY, I_EW, I_EH, I_BH, I_BT, I_NY, I_NW, I_MY, I_MW, I_MO, I_UT, I_LT, I_HAIRLINE,
 I_HAIRVOL, I_HAIRLEN, I_FOCAL, I_CY, I_NOSEH) = range(22)
I_SKIN, I_HAIR, I_BGTOP, I_BGBOT, I_IRIS, I_LIP, I_SHIRT = (22, 25, 28, 31, 34, 37, 40)
N_IDENT = 43
# ---- per-frame parameter layout ----
(F_R, F_C, F_OPEN_L, F_OPEN_R, F_GX, F_GY, F_MOPEN, F_MWIDTH, F_SMILE, F_BROW_IN, F_BROW_OUT, F_SQUINT,
 F_WIDEN) = (0, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22)
N_FRAME = 23

CAMERA_DISTANCE = 4.0  # head-centre depth in head units; the focal length maps the face to the aligned-crop scale


def _seed_seq(*keys) -> np.random.SeedSequence:
    """A SeedSequence from arbitrary hashable keys (stable across processes: no Python `hash`)."""
    h = hashlib.blake2b(repr(keys).encode(), digest_size=16).digest()
    return np.random.SeedSequence(int.from_bytes(h, "little"))


def _rng(*keys) -> np.random.Generator:
    return np.random.default_rng(_seed_seq(*keys))


# ================================================================================================================
# identities

def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)))


def make_identity(seed: int, identity: int) -> np.ndarray:
    """Identity parameter vector `(N_IDENT,)` float64 for identity `identity` of dataset seed `seed`."""
    r = _rng("identity", seed, identity)
    p = np.zeros(N_IDENT)
    p[I_A] = r.uniform(0.56, 0.68)  # head half-width
    p[I_B] = p[I_A] * r.uniform(1.18, 1.34)  # half-height
    p[I_C] = p[I_A] * r.uniform(0.85, 1.0)  # half-depth
    p[I_EX] = r.uniform(0.20, 0.26)
    p[I_EY] = r.uniform(-0.19, -0.13)
    p[I_EW] = r.uniform(0.085, 0.105)
    p[I_EH] = r.uniform(0.40, 0.55)  # almond height / width
    p[I_BH] = r.uniform(0.10, 0.14)
    p[I_BT] = r.uniform(0.022, 0.040)
    p[I_NY] = r.uniform(0.10, 0.16)
    p[I_NW] = r.uniform(0.035, 0.050)
    p[I_MY] = r.uniform(0.34, 0.42)
    # mouth rest width follows the face width (as in real faces), with a small residual: one frame then shows
    # the identity's rest width through the face outline, so a frame's mouth-width factor is readable (issue 12).
    # The draw is kept (same random stream: every other identity parameter is unchanged); it becomes the +-2 %
    # residual. Range 0.137..0.167 (was an independent uniform 0.13..0.17).
    p[I_MW] = MOUTH_TO_FACE * p[I_A] * (1.0 + 0.02 * (r.uniform(0.13, 0.17) - 0.15) / 0.02)
    p[I_MO] = r.uniform(0.085, 0.11)
    p[I_UT] = r.uniform(0.022, 0.034)
    p[I_LT] = r.uniform(0.028, 0.044)
    p[I_HAIRLINE] = r.uniform(-0.72, -0.52)
    p[I_HAIRVOL] = r.uniform(1.02, 1.16)
    p[I_HAIRLEN] = r.uniform(-0.1, 0.9)
    p[I_FOCAL] = CAMERA_DISTANCE * r.uniform(0.95, 1.05)
    p[I_CY] = r.uniform(-0.30, -0.24)  # head-centre height in the image (aligned crops show little forehead)
    p[I_NOSEH] = r.uniform(0.10, 0.18)  # nose protrusion (parallax of the nostrils under rotation)
    # skin: between a light and a dark tone, slight hue variation
    t = r.uniform(0, 1)
    skin = (1 - t) * np.array([0.96, 0.80, 0.69]) + t * np.array([0.42, 0.27, 0.19])
    p[I_SKIN:I_SKIN + 3] = np.clip(skin * r.uniform(0.95, 1.05, 3), 0, 1)
    hair_choices = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.55, 0.38, 0.20], [0.85, 0.70, 0.42],
                             [0.55, 0.22, 0.10], [0.62, 0.62, 0.62]])
    p[I_HAIR:I_HAIR + 3] = np.clip(hair_choices[r.integers(len(hair_choices))] * r.uniform(0.85, 1.15), 0, 1)
    hue = r.uniform(0, 1)
    p[I_BGTOP:I_BGTOP + 3] = _hsv_to_rgb(hue, r.uniform(0.1, 0.6), r.uniform(0.55, 0.95))
    p[I_BGBOT:I_BGBOT + 3] = _hsv_to_rgb(hue + r.uniform(-0.1, 0.1), r.uniform(0.1, 0.6), r.uniform(0.25, 0.7))
    iris_choices = np.array([[0.30, 0.18, 0.08], [0.20, 0.35, 0.55], [0.25, 0.40, 0.25], [0.40, 0.42, 0.45]])
    p[I_IRIS:I_IRIS + 3] = iris_choices[r.integers(len(iris_choices))]
    p[I_LIP:I_LIP + 3] = np.clip(p[I_SKIN:I_SKIN + 3] * np.array([0.85, 0.55, 0.55]) + np.array([0.08, 0, 0]), 0, 1)
    p[I_SHIRT:I_SHIRT + 3] = _hsv_to_rgb(r.uniform(0, 1), r.uniform(0.2, 0.8), r.uniform(0.2, 0.85))
    return p


# ================================================================================================================
# trajectories

def _smooth_noise(r: np.random.Generator, n: int, sigma: float, dims: int = 1) -> np.ndarray:
    """Stationary Gaussian-smoothed white noise `(n, dims)` with unit standard deviation (in expectation)."""
    from scipy.ndimage import gaussian_filter1d

    pad = int(4 * sigma) + 1
    w = r.standard_normal((n + 2 * pad, dims))
    s = gaussian_filter1d(w, sigma, axis=0, mode="wrap")[pad:pad + n]
    return s * np.sqrt(2.0 * np.sqrt(np.pi) * sigma)  # std of Gaussian-filtered unit white noise is that^-1/2


def _syllable_plan(r: np.random.Generator, duration: float) -> np.ndarray:
    """Syllables `(n, 4)`: start [s], end [s], vowel index, peak amplitude; words separated by pauses."""
    out = []
    t = r.uniform(0.0, 0.3)
    while t < duration:
        for _ in range(int(r.integers(1, 5))):
            d = r.uniform(0.14, 0.30)
            out.append((t, t + d, int(r.integers(len(VOWELS))), r.uniform(0.55, 1.0)))
            t += d + r.uniform(0.0, 0.04)
        t += r.uniform(0.12, 0.45)
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def _envelope(plan: np.ndarray, times: np.ndarray, attack: float = 0.035, release: float = 0.05) -> tuple:
    """Amplitude envelope and vowel index at `times` [s] from a syllable plan (raised-cosine ramps).

    Returns `(env (n,), vowel (n,) int, -1 where silent)`."""
    env = np.zeros(len(times))
    vowel = np.full(len(times), -1, dtype=np.int64)
    for s, e, v, a in plan:  # `times` is sorted: each syllable touches one contiguous slice
        i0, i1 = np.searchsorted(times, s, "left"), np.searchsorted(times, e, "left")
        if i1 <= i0:
            continue
        tt = times[i0:i1]
        up = np.clip((tt - s) / attack, 0, 1)
        down = np.clip((e - tt) / release, 0, 1)
        g = a * (0.5 - 0.5 * np.cos(np.pi * np.minimum(up, down)))
        better = g > env[i0:i1]
        env[i0:i1][better] = g[better]
        vowel[i0:i1][better] = int(v)
    return env, vowel


def synthesize_speech(plan: np.ndarray, num_samples: int, f0: float, tract: float, seed_keys: tuple,
                      sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like waveform float32 `(num_samples,)` for a syllable plan (peak about 0.3).

    Glottal source: a band-limited-ish sawtooth at a pitch contour around `f0` Hz (declination, per-syllable
    accents, slight vibrato); vocal tract: three second-order formant resonators per syllable (formants of the
    vowel scaled by `tract`); onset noise bursts; a faint noise floor.
    """
    from scipy.signal import lfilter

    r = _rng("speech", *seed_keys)
    n = int(num_samples)
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    dur = n / sample_rate
    pitch = f0 * (1.0 + 0.06 * np.sin(2 * np.pi * 0.3 * t + r.uniform(0, 6.3)) - 0.04 * t / max(dur, 1e-3)
                  + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = np.cumsum(pitch) / sample_rate
    source = 2.0 * (phase % 1.0) - 1.0
    source = np.diff(source, prepend=source[0])  # emphasise pulses (glottal closure) and tilt the spectrum
    source[np.abs(source) > 1.0] = -0.6  # the wrap-around jump becomes a single negative pulse
    env, _ = _envelope(plan, t)
    for k, (s, e, v, a) in enumerate(plan):
        i0, i1 = int(s * sample_rate), min(n, int(np.ceil(e * sample_rate)) + 1)
        if i0 >= n or i1 <= i0:
            continue
        seg = source[i0:i1] * (1.0 + 0.15 * r.uniform(-1, 1))
        for fc, bw in zip(VOWEL_FORMANTS[int(v)] * tract, FORMANT_BANDWIDTHS):
            rr = np.exp(-np.pi * bw / sample_rate)
            theta = 2 * np.pi * fc / sample_rate
            a1, a2 = -2 * rr * np.cos(theta), rr * rr
            seg = lfilter([1.0 + a1 + a2], [1.0, a1, a2], seg)  # unit gain at DC, peak at the formant
        out[i0:i1] += seg * env[i0:i1]
        nb = min(int(0.025 * sample_rate), i1 - i0)  # consonant-like burst at syllable onset
        if r.uniform() < 0.7:
            out[i0:i0 + nb] += r.standard_normal(nb) * 0.15 * a * np.hanning(nb)
    out += r.standard_normal(n) * 1e-3
    peak = np.max(np.abs(out)) + 1e-9
    return (out * (0.3 / peak)).astype(np.float32)


class ClipState:
    """Everything about one clip except pixels: per-frame kernel parameters, factors and the syllable plan."""

    def __init__(self, params: np.ndarray, factors: dict, plan: np.ndarray, ident: np.ndarray, f0: float,
                 tract: float, keys: tuple):
        self.params, self.factors, self.plan, self.ident = params, factors, plan, ident
        self.f0, self.tract, self.keys = f0, tract, keys
        self._audio = None
        self._mel = None


def _rotation(yaw, pitch, roll) -> np.ndarray:
    """Head-to-camera rotations `(n, 3, 3)` = Rz(roll) Rx(pitch) Ry(yaw) with the sign conventions of the module."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    n = len(yaw)
    ry = np.zeros((n, 3, 3)); ry[:, 0, 0] = cy; ry[:, 0, 2] = -sy; ry[:, 1, 1] = 1; ry[:, 2, 0] = sy; ry[:, 2, 2] = cy
    rx = np.zeros((n, 3, 3)); rx[:, 0, 0] = 1; rx[:, 1, 1] = cp; rx[:, 1, 2] = sp; rx[:, 2, 1] = -sp; rx[:, 2, 2] = cp
    rz = np.zeros((n, 3, 3)); rz[:, 0, 0] = cr; rz[:, 0, 1] = -sr; rz[:, 1, 0] = sr; rz[:, 1, 1] = cr; rz[:, 2, 2] = 1
    return rz @ rx @ ry


def _project(points: np.ndarray, rot: np.ndarray, centre: np.ndarray, focal: float) -> np.ndarray:
    """Head-local points `(m, 3)` -> image coordinates in [-1, 1] `(n, m, 2)` for per-frame rot/centre."""
    cam = np.einsum("nij,mj->nmi", rot, points) + centre[:, None, :]
    return focal * cam[..., :2] / cam[..., 2:3]


def _surface(ident: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Front-surface points of the head ellipsoid above head-local (X, Y) `(m, 2)` -> `(m, 3)`."""
    a, b, c = ident[I_A], ident[I_B], ident[I_C]
    z = -c * np.sqrt(np.clip(1 - (xy[:, 0] / a) ** 2 - (xy[:, 1] / b) ** 2, 0, 1))
    return np.concatenate([xy, z[:, None]], axis=1)


def _box(pts_img: np.ndarray) -> np.ndarray:
    """Image points `(n, m, 2)` in [-1,1] -> boxes `(n, 4)` x0, y0, x1, y1 in [0,1]."""
    lo = (pts_img.min(axis=1) + 1) / 2
    hi = (pts_img.max(axis=1) + 1) / 2
    return np.clip(np.concatenate([lo, hi], axis=1), 0, 1).astype(np.float32)


def make_clip_state(seed: int, identity: int, clip: int, num_frames: int, ident: np.ndarray | None = None,
                    pose_scale: float = 1.0) -> ClipState:
    """Trajectories, kernel parameters and ground-truth factors of one clip (no pixels, no waveform)."""
    n = int(num_frames)
    ident = make_identity(seed, identity) if ident is None else ident
    keys = (seed, identity, clip)
    times = (np.arange(n) + 0.5) / FPS  # the frame's mid-time: its mel window is centred within ~15 ms of it
    dur = n / FPS

    # --- audio plan -> mouth ---
    ra = _rng("audio", *keys)
    plan = _syllable_plan(ra, dur)
    f0 = float(ra.uniform(95, 220))
    tract = float(ra.uniform(0.92, 1.12) * (1.0 + 0.15 * (f0 - 95) / 125))
    env, vowel = _envelope(plan, times)
    vm = VOWEL_MOUTH[np.maximum(vowel, 0)]
    opening = np.where(vowel >= 0, env * vm[:, 0], 0.0)
    width = np.where(vowel >= 0, REST_WIDTH + np.minimum(1.0, 1.6 * env) * (vm[:, 1] - REST_WIDTH), REST_WIDTH)

    # --- head pose (own stream) ---
    rp = _rng("pose", *keys)
    pz = _smooth_noise(rp, n, sigma=14.0, dims=6)
    yaw = np.clip(0.28 * pose_scale * pz[:, 0], -0.75, 0.75)
    pitch = np.clip(0.16 * pose_scale * pz[:, 1], -0.45, 0.45)
    roll = np.clip(0.10 * pose_scale * pz[:, 2], -0.35, 0.35)
    tx = np.clip(0.06 * pose_scale * pz[:, 3], -0.2, 0.2)
    ty = np.clip(0.05 * pose_scale * pz[:, 4], -0.2, 0.2)
    tz = np.clip(0.04 * pose_scale * pz[:, 5], -0.12, 0.12)

    # --- gaze: fixations with smooth saccades (own stream) ---
    rg = _rng("gaze", *keys)
    gaze = np.zeros((n, 2))
    f = 0
    while f < n:
        d = int(rg.integers(8, 30))
        gaze[f:f + d] = rg.uniform(-0.85, 0.85, 2) * np.array([1.0, 0.7])
        f += d
    from scipy.ndimage import gaussian_filter1d

    gaze = gaussian_filter1d(gaze, 1.5, axis=0, mode="nearest")

    # --- blinks (own stream): events every ~2-5 s, mostly both eyes, sometimes one ---
    rb = _rng("blink", *keys)
    eye_open = np.ones((n, 2))
    f = int(rb.integers(0, 40))
    while f < n:
        length = int(rb.integers(4, 8))
        prof = np.sin(np.pi * (np.arange(length) + 0.5) / length) ** 0.7
        which = rb.uniform()
        eyes = [0, 1] if which < 0.75 else ([0] if which < 0.875 else [1])
        seg = slice(f, min(n, f + length))
        for e in eyes:
            eye_open[seg, e] = np.minimum(eye_open[seg, e], 1.0 - prof[:seg.stop - seg.start])
        f += length + int(rb.integers(30, 110))

    # --- emotion (own stream): segments of one class, intensity ramps in and out ---
    re_ = _rng("emotion", *keys)
    emotion = np.zeros(n, dtype=np.int64)
    intensity = np.zeros(n)
    f = 0
    while f < n:
        length = int(re_.integers(40, 110))
        cls = int(re_.integers(len(EMOTIONS)))
        peak = re_.uniform(0.4, 1.0) if cls else 0.0
        ramp = min(12, length // 3)
        k = np.arange(length)
        shape = np.minimum(1.0, np.minimum((k + 1) / ramp, (length - k) / ramp))
        seg = slice(f, min(n, f + length))
        emotion[seg] = cls
        intensity[seg] = (peak * shape)[:seg.stop - seg.start]
        f += length
    expr = EMOTION_EXPR[emotion] * intensity[:, None]

    # --- kernel parameters ---
    rot = _rotation(yaw, pitch, roll)
    a = ident[I_A]
    depth = CAMERA_DISTANCE * (1.0 + tz)
    centre = np.stack([tx * a * depth / ident[I_FOCAL], (ident[I_CY] + ty * a) * depth / ident[I_FOCAL], depth],
                      axis=1)
    params = np.zeros((n, N_FRAME))
    params[:, F_R:F_R + 9] = rot.reshape(n, 9)
    params[:, F_C:F_C + 3] = centre
    params[:, F_OPEN_L] = eye_open[:, 0]
    params[:, F_OPEN_R] = eye_open[:, 1]
    params[:, F_GX:F_GY + 1] = gaze
    params[:, F_MOPEN] = opening
    params[:, F_MWIDTH] = width
    params[:, F_SMILE:F_WIDEN + 1] = expr

    # --- boxes from projected surface points ---
    ex, ey, ew = ident[I_EX], ident[I_EY], ident[I_EW]
    xs = np.linspace(-ex - 1.25 * ew, ex + 1.25 * ew, 7)
    ys = np.array([ey - 0.95 * ew, ey, ey + 0.75 * ew])
    eye_pts = _surface(ident, np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2))
    mw = ident[I_MW] * 1.4  # widest mouth: width 1 and full smile give 1.23 x 1.1 = 1.353 x I_MW
    xs = np.linspace(-mw, mw, 7)
    ys = np.array([ident[I_MY] - ident[I_MO] - ident[I_UT] - 0.03, ident[I_MY],
                   ident[I_MY] + 1.15 * ident[I_MO] + ident[I_LT] + 0.04])
    mouth_pts = _surface(ident, np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2))
    eye_box = _box(_project(eye_pts, rot, centre, ident[I_FOCAL]))
    mouth_box = _box(_project(mouth_pts, rot, centre, ident[I_FOCAL]))

    factors = {
        "pose": np.stack([yaw, pitch, roll, tx, ty, tz], axis=1).astype(np.float32),
        "eye_open": eye_open.astype(np.float32),
        "gaze": np.clip(gaze, -1, 1).astype(np.float32),
        "emotion": np.where(intensity > 0, emotion, 0).astype(np.int64),
        "emotion_intensity": intensity.astype(np.float32),
        "mouth": np.stack([opening, width], axis=1).astype(np.float32),
        "eye_box": eye_box,
        "mouth_box": mouth_box,
        # extras (not in the contract, handy for analysis): vowel per frame (-1 = silence), audio envelope
        "vowel": vowel,
        "envelope": env.astype(np.float32),
    }
    return ClipState(params, factors, plan, ident, f0, tract, keys)


# ================================================================================================================
# rendering


# ---- the per-pixel renderer (plain Python, compiled by numba in `_get_kernel`) ----

def _k_cov(d, eps):
    """Coverage of a pixel at signed distance `d` (negative inside) for a pixel footprint `eps`."""
    v = 0.5 - d / eps
    return 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)


def _k_conic(k00, k01, k02, k11, k12, k22, dx, dy, focal):
    """Signed value (positive inside) and image-space gradient norm of the silhouette conic d^T K d."""
    q0 = k00 * dx + k01 * dy + k02
    q1 = k01 * dx + k11 * dy + k12
    q2 = k02 * dx + k12 * dy + k22
    g = dx * q0 + dy * q1 + q2
    gn = 2.0 * np.sqrt(q0 * q0 + q1 * q1) / focal + 1e-12
    return g, gn


def _k_silhouette(rot, centre, ra, rb, rc):
    """Conic K (3x3) whose positive side d^T K d > 0 are the rays d = (x/f, y/f, 1) hitting the ellipsoid."""
    m = rot @ np.diag(np.array([1.0 / (ra * ra), 1.0 / (rb * rb), 1.0 / (rc * rc)])) @ rot.T
    o = -centre
    mo = m @ o
    omo = o @ mo
    return np.outer(mo, mo) - (omo - 1.0) * m


def _render_kernel(out, ident, params):
    n = out.shape[0]
    size = out.shape[1]
    px = 2.0 / size
    a = ident[I_A]
    b = ident[I_B]
    c = ident[I_C]
    focal = ident[I_FOCAL]
    ex = ident[I_EX]
    ey = ident[I_EY]
    ew = ident[I_EW]
    ehr = ident[I_EH]
    bh = ident[I_BH]
    bt = ident[I_BT]
    ny = ident[I_NY]
    nw = ident[I_NW]
    my = ident[I_MY]
    mw0 = ident[I_MW]
    mo0 = ident[I_MO]
    ut = ident[I_UT]
    lt = ident[I_LT]
    hairline = ident[I_HAIRLINE] * b
    hv = ident[I_HAIRVOL]
    hairlen = ident[I_HAIRLEN]
    noseh = ident[I_NOSEH]
    # light direction (towards the light, camera coordinates: upper left, in front)
    lx0, ly0, lz0 = -0.35, -0.45, -0.82
    ln = np.sqrt(lx0 * lx0 + ly0 * ly0 + lz0 * lz0)
    lx0 /= ln
    ly0 /= ln
    lz0 /= ln
    for k in range(n):
        rot = params[k, F_R:F_R + 9].copy().reshape(3, 3)
        cen = params[k, F_C:F_C + 3].copy()
        kh = _k_silhouette(rot, cen, a, b, c)
        hoff = rot @ np.array([0.0, -0.10 * b, 0.10 * c])
        kb = _k_silhouette(rot, cen + hoff, a * hv, b * hv * 0.98, c * hv)
        opx = -(rot[0, 0] * cen[0] + rot[1, 0] * cen[1] + rot[2, 0] * cen[2])
        opy = -(rot[0, 1] * cen[0] + rot[1, 1] * cen[1] + rot[2, 1] * cen[2])
        opz = -(rot[0, 2] * cen[0] + rot[1, 2] * cen[1] + rot[2, 2] * cen[2])
        s_img = focal / cen[2]
        cx_img = focal * cen[0] / cen[2]
        cy_img = focal * cen[1] / cen[2]
        upx = rot[0, 1]
        upy = rot[1, 1]
        upn = np.sqrt(upx * upx + upy * upy) + 1e-12
        upx /= upn
        upy /= upn
        open_l = params[k, F_OPEN_L]
        open_r = params[k, F_OPEN_R]
        gx = params[k, F_GX]
        gy = params[k, F_GY]
        mopen = params[k, F_MOPEN]
        mwidth = params[k, F_MWIDTH]
        smile = params[k, F_SMILE]
        brow_in = params[k, F_BROW_IN]
        brow_out = params[k, F_BROW_OUT]
        squint = params[k, F_SQUINT]
        widen = params[k, F_WIDEN]
        mwe = mw0 * (0.78 + 0.45 * mwidth) * (1.0 + 0.10 * smile)
        oh = mo0 * mopen
        for row in range(size):
            y = (row + 0.5) * px - 1.0
            dy = y / focal
            tb = (y + 1.0) * 0.5
            for col in range(size):
                x = (col + 0.5) * px - 1.0
                dx = x / focal
                # --- background: vertical gradient ---
                r = ident[I_BGTOP] * (1.0 - tb) + ident[I_BGBOT] * tb
                g = ident[I_BGTOP + 1] * (1.0 - tb) + ident[I_BGBOT + 1] * tb
                bl = ident[I_BGTOP + 2] * (1.0 - tb) + ident[I_BGBOT + 2] * tb
                # --- back hair (ellipsoid silhouette cut at the hair length along the head's up axis) ---
                gv, gn = _k_conic(kb[0, 0], kb[0, 1], kb[0, 2], kb[1, 1], kb[1, 2], kb[2, 2], dx, dy, focal)
                al = _k_cov(-gv / gn, px)
                if al > 0.0:
                    yl = (x - cx_img) * upx + (y - cy_img) * upy
                    al *= _k_cov(yl - hairlen * b * s_img, px)
                    r += (ident[I_HAIR] * 0.8 - r) * al
                    g += (ident[I_HAIR + 1] * 0.8 - g) * al
                    bl += (ident[I_HAIR + 2] * 0.8 - bl) * al
                # --- shoulders and neck ---
                sx = (x - cx_img) / (2.1 * a * s_img)
                sy = (y - cy_img - 2.05 * b * s_img) / (0.8 * b * s_img)
                sd = (np.sqrt(sx * sx + sy * sy) - 1.0) * 0.8 * b * s_img
                al = _k_cov(sd, px)
                if al > 0.0:
                    r += (ident[I_SHIRT] - r) * al
                    g += (ident[I_SHIRT + 1] - g) * al
                    bl += (ident[I_SHIRT + 2] - bl) * al
                nd = max(abs(x - cx_img) - 0.45 * a * s_img, cy_img + 0.2 * b * s_img - y)
                al = _k_cov(nd, px)
                if al > 0.0:
                    r += (ident[I_SKIN] * 0.72 - r) * al
                    g += (ident[I_SKIN + 1] * 0.72 - g) * al
                    bl += (ident[I_SKIN + 2] * 0.72 - bl) * al
                # --- head ---
                gv, gn = _k_conic(kh[0, 0], kh[0, 1], kh[0, 2], kh[1, 1], kh[1, 2], kh[2, 2], dx, dy, focal)
                cov_head = _k_cov(-gv / gn, px)
                if cov_head > 0.0:
                    dpx = rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0]
                    dpy = rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1]
                    dpz = rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2]
                    qa = dpx * dpx / (a * a) + dpy * dpy / (b * b) + dpz * dpz / (c * c)
                    qb = 2.0 * (opx * dpx / (a * a) + opy * dpy / (b * b) + opz * dpz / (c * c))
                    qc = opx * opx / (a * a) + opy * opy / (b * b) + opz * opz / (c * c) - 1.0
                    disc = qb * qb - 4.0 * qa * qc
                    t = (-qb - np.sqrt(max(disc, 0.0))) / (2.0 * qa)
                    hx = opx + t * dpx
                    hy = opy + t * dpy
                    hz = opz + t * dpz
                    nx = hx / (a * a)
                    ny_ = hy / (b * b)
                    nz = hz / (c * c)
                    nn = np.sqrt(nx * nx + ny_ * ny_ + nz * nz) + 1e-12
                    nx /= nn
                    ny_ /= nn
                    nz /= nn
                    dn = np.sqrt(dpx * dpx + dpy * dpy + dpz * dpz)
                    facing = -(nx * dpx + ny_ * dpy + nz * dpz) / dn
                    ncx = rot[0, 0] * nx + rot[0, 1] * ny_ + rot[0, 2] * nz
                    ncy = rot[1, 0] * nx + rot[1, 1] * ny_ + rot[1, 2] * nz
                    ncz = rot[2, 0] * nx + rot[2, 1] * ny_ + rot[2, 2] * nz
                    lam = ncx * lx0 + ncy * ly0 + ncz * lz0
                    shade = 0.58 + 0.47 * (lam if lam > 0.0 else 0.0)
                    eps = px * t / focal / max(facing, 0.3)
                    fr = ident[I_SKIN] * shade
                    fg = ident[I_SKIN + 1] * shade
                    fb = ident[I_SKIN + 2] * shade
                    X = hx
                    Y = hy
                    # hair: fringe above a wavy hairline, and the sides of the head
                    hl = hairline + 0.05 * b * np.cos(2.5 * X / a + 1.3 * hv * 10.0)
                    inside = max(hl - Y, min(abs(X) - 0.86 * a, 0.05 * b - Y))
                    al = _k_cov(-inside, eps)
                    if al > 0.0:
                        fr += (ident[I_HAIR] * shade - fr) * al
                        fg += (ident[I_HAIR + 1] * shade - fg) * al
                        fb += (ident[I_HAIR + 2] * shade - fb) * al
                    # eyes and brows
                    for side in (-1.0, 1.0):
                        ecx = side * ex
                        lxe = (X - ecx) / ew
                        lye = (Y - ey) / ew
                        if abs(lxe) < 1.6 and lye > -1.8 and lye < 1.5:
                            eo = open_l if side < 0.0 else open_r
                            eo = eo * (1.0 - 0.6 * squint)
                            eo = 0.0 if eo < 0.0 else (1.0 if eo > 1.0 else eo)
                            xx = lxe if abs(lxe) < 1.0 else (1.0 if lxe > 0.0 else -1.0)
                            h = 1.0 - xx * xx
                            y_up = -ehr * h ** 0.75 * (1.0 + 0.5 * widen)
                            y_lo = ehr * 0.75 * h * (1.0 - 0.35 * squint)
                            lid = y_lo + (y_up - y_lo) * eo
                            # socket shadow
                            sdist = np.sqrt(lxe * lxe * 0.55 + (lye + 0.1) * (lye + 0.1)) - 1.25
                            al = 0.18 * _k_cov(sdist * ew, 4.0 * eps)
                            fr -= fr * al
                            fg -= fg * al
                            fb -= fb * al
                            d_in = max(max(lid - lye, lye - y_lo), abs(lxe) - 1.0)
                            al = _k_cov(d_in * ew, eps)
                            if al > 0.0:
                                er = 0.93 * shade
                                eg = 0.92 * shade
                                eb = 0.90 * shade
                                ix = 0.5 * gx
                                iy = 0.3 * gy
                                di = np.sqrt((lxe - ix) ** 2 + (lye - iy) ** 2)
                                ai = _k_cov((di - 0.46) * ew, eps)
                                er += (ident[I_IRIS] - er) * ai
                                eg += (ident[I_IRIS + 1] - eg) * ai
                                eb += (ident[I_IRIS + 2] - eb) * ai
                                ap = _k_cov((di - 0.2) * ew, eps)
                                er += (0.04 - er) * ap
                                eg += (0.04 - eg) * ap
                                eb += (0.05 - eb) * ap
                                dh = np.sqrt((lxe - ix + 0.15) ** 2 + (lye - iy + 0.15) ** 2)
                                ah = 0.8 * _k_cov((dh - 0.09) * ew, eps)
                                er += (1.0 - er) * ah
                                eg += (1.0 - eg) * ah
                                eb += (1.0 - eb) * ah
                                fr += (er - fr) * al
                                fg += (eg - fg) * al
                                fb += (eb - fb) * al
                            # lash line along the upper lid, faint line along the lower lid
                            edge = _k_cov((abs(lxe) - 1.0) * ew, eps)
                            thick = 0.10 + 0.06 * (1.0 - eo)
                            al = edge * _k_cov((abs(lye - lid) - thick) * ew, eps)
                            fr += (0.10 - fr) * al
                            fg += (0.07 - fg) * al
                            fb += (0.06 - fb) * al
                            al = 0.35 * edge * _k_cov((abs(lye - y_lo) - 0.05) * ew, eps)
                            fr += (0.25 * shade - fr) * al
                            fg += (0.15 * shade - fg) * al
                            fb += (0.12 * shade - fb) * al
                            # lid crease
                            al = 0.25 * edge * _k_cov((abs(lye - (y_up - 0.35)) - 0.05) * ew, eps)
                            fr -= fr * al
                            fg -= fg * al
                            fb -= fb * al
                        # brow: an arched, tapered capsule from the inner to the outer end
                        ax_ = side * (ex - 0.85 * ew)
                        ay_ = ey - bh - brow_in * 1.0 * ew
                        bx_ = side * (ex + 1.15 * ew)
                        by_ = ey - bh + 0.15 * ew - brow_out * 0.8 * ew
                        if abs(X - 0.5 * (ax_ + bx_)) < 1.6 * ew + bt and abs(Y - 0.5 * (ay_ + by_)) < 1.6 * ew + bt:
                            vx = bx_ - ax_
                            vy = by_ - ay_
                            ts = ((X - ax_) * vx + (Y - ay_) * vy) / (vx * vx + vy * vy)
                            ts = 0.0 if ts < 0.0 else (1.0 if ts > 1.0 else ts)
                            arch = 4.0 * ts * (1.0 - ts) * 0.22 * ew
                            ddx = X - (ax_ + ts * vx)
                            ddy = Y + arch - (ay_ + ts * vy)
                            db = np.sqrt(ddx * ddx + ddy * ddy) - 0.5 * bt * (1.0 - 0.45 * ts)
                            al = _k_cov(db, eps)
                            if al > 0.0:
                                fr += (ident[I_HAIR] * 0.75 * shade - fr) * al
                                fg += (ident[I_HAIR + 1] * 0.75 * shade - fg) * al
                                fb += (ident[I_HAIR + 2] * 0.75 * shade - fb) * al
                    # nose, drawn with parallax (its tip protrudes by `noseh`)
                    nxp = X - noseh * dpx / dpz
                    nyp = Y - noseh * dpy / dpz
                    if abs(nxp) < 3.0 * nw and nyp > ey and nyp < ny + 2.0 * nw:
                        # shadow on the side away from the light, along the bridge
                        ts = (nyp - (ey + 0.4 * ew)) / (ny - 0.3 * nw - ey - 0.4 * ew)
                        if ts > 0.0 and ts < 1.0:
                            bxn = 0.45 * nw + 0.45 * nw * ts
                            al = 0.22 * _k_cov(abs(nxp - bxn) - 0.25 * nw, 2.0 * eps)
                            fr -= fr * al
                            fg -= fg * al
                            fb -= fb * al
                        dsh = np.sqrt((nxp / (1.2 * nw)) ** 2 + ((nyp - ny - 0.45 * nw) / (0.35 * nw)) ** 2) - 1.0
                        al = 0.30 * _k_cov(dsh * 0.35 * nw, 2.0 * eps)
                        fr -= fr * al
                        fg -= fg * al
                        fb -= fb * al
                        dtip = np.sqrt((nxp / (1.1 * nw)) ** 2 + ((nyp - ny + 0.25 * nw) / (0.8 * nw)) ** 2) - 1.0
                        al = 0.35 * _k_cov(dtip * 0.8 * nw, 3.0 * eps)
                        fr += (min(1.0, fr * 1.12) - fr) * al
                        fg += (min(1.0, fg * 1.12) - fg) * al
                        fb += (min(1.0, fb * 1.12) - fb) * al
                        for side in (-1.0, 1.0):
                            dno = np.sqrt(((nxp - side * 0.62 * nw) / (0.36 * nw)) ** 2
                                          + ((nyp - ny - 0.1 * nw) / (0.2 * nw)) ** 2) - 1.0
                            al = 0.85 * _k_cov(dno * 0.2 * nw, eps)
                            fr += (ident[I_SKIN] * 0.3 - fr) * al
                            fg += (ident[I_SKIN + 1] * 0.25 - fg) * al
                            fb += (ident[I_SKIN + 2] * 0.25 - fb) * al
                    # mouth: lips, dark interior, upper teeth, a seam when closed
                    if abs(X) < 1.3 * mwe and abs(Y - my) < mo0 * 1.3 + lt + ut + 0.05:
                        mx = X / mwe
                        m = my - smile * 0.085 * mx * mx + 0.02 * abs(smile)
                        hm = 1.0 - mx * mx
                        hm = np.sqrt(hm) if hm > 0.0 else 0.0
                        hl2 = hm ** 0.6
                        top_i = m - oh * hm
                        bot_i = m + 1.15 * oh * hm
                        xd = (abs(mx) - 1.0) * mwe
                        d_lip = max(max(top_i - ut * hl2 - Y, Y - bot_i - lt * hl2), xd)
                        al = _k_cov(d_lip, eps)
                        if al > 0.0:
                            lr_ = ident[I_LIP] * shade
                            lg_ = ident[I_LIP + 1] * shade
                            lb_ = ident[I_LIP + 2] * shade
                            if Y > m:
                                lr_ = min(1.0, lr_ * 1.08)
                                lg_ = min(1.0, lg_ * 1.08)
                                lb_ = min(1.0, lb_ * 1.08)
                            fr += (lr_ - fr) * al
                            fg += (lg_ - fg) * al
                            fb += (lb_ - fb) * al
                        if oh > 1e-5:
                            d_m = max(max(top_i - Y, Y - bot_i), xd)
                            al = _k_cov(d_m, eps)
                            if al > 0.0:
                                ir = 0.28 * shade
                                ig = 0.06 * shade
                                ib = 0.08 * shade
                                th = min(0.7 * oh, 0.35 * mo0)
                                at = _k_cov(max(d_m, Y - (top_i + th * hm)), eps)
                                ir += (0.93 * shade - ir) * at
                                ig += (0.91 * shade - ig) * at
                                ib += (0.86 * shade - ib) * at
                                fr += (ir - fr) * al
                                fg += (ig - fg) * al
                                fb += (ib - fb) * al
                        seam = 1.0 - oh / (0.2 * mo0)
                        if seam > 0.0:
                            al = 0.75 * seam * _k_cov(max(abs(Y - m) - 0.004, xd), eps)
                            fr += (0.22 * shade - fr) * al
                            fg += (0.07 * shade - fg) * al
                            fb += (0.08 * shade - fb) * al
                    r += (fr - r) * cov_head
                    g += (fg - g) * cov_head
                    bl += (fb - bl) * cov_head
                r = 255.0 * r + 0.5
                g = 255.0 * g + 0.5
                bl = 255.0 * bl + 0.5
                out[k, row, col, 0] = np.uint8(0.0 if r < 0.0 else (255.0 if r > 255.0 else r))
                out[k, row, col, 1] = np.uint8(0.0 if g < 0.0 else (255.0 if g > 255.0 else g))
                out[k, row, col, 2] = np.uint8(0.0 if bl < 0.0 else (255.0 if bl > 255.0 else bl))


_KERNEL_HELPERS = ("_k_cov", "_k_conic", "_k_silhouette")

_KERNEL = None


def _get_kernel():
    """Compile (once per process; cached on disk by numba) and return the per-pixel renderer."""
    global _KERNEL
    if _KERNEL is None:
        try:
            import numba
        except ImportError as e:  # numba comes with librosa; without it rendering would be ~1000x slower
            raise ImportError("pdfgc.data.synthetic needs numba (installed with librosa): pip install numba") from e
        g = globals()
        for name in _KERNEL_HELPERS:  # the kernel calls these by global name: replace them by compiled versions
            if not hasattr(g[name], "py_func"):
                g[name] = numba.njit(cache=True, nogil=True)(g[name])
        _KERNEL = numba.njit(cache=True, nogil=True)(_render_kernel)
    return _KERNEL


def render_frames(ident: np.ndarray, params: np.ndarray, image_size: int) -> np.ndarray:
    """Render frames: identity vector `(N_IDENT,)`, per-frame parameters `(n, N_FRAME)` -> uint8 `(n, S, S, 3)`."""
    params = np.ascontiguousarray(params, dtype=np.float64)
    out = np.empty((params.shape[0], int(image_size), int(image_size), 3), dtype=np.uint8)
    if params.shape[0]:
        _get_kernel()(out, np.ascontiguousarray(ident, dtype=np.float64), params)
    return out


# ================================================================================================================
# the source

_PRELOADED: dict[tuple, list] = {}


def _clip_states(args: tuple) -> list:
    seed, ids, clips, num_frames, pose_scale = args
    out = []
    for ident_id in ids:
        ident = make_identity(seed, int(ident_id))
        out += [make_clip_state(seed, int(ident_id), c, num_frames, ident, pose_scale) for c in range(clips)]
    return out


def preload_states(src: "SyntheticSource", workers: int | None = None) -> list:
    """Every clip state of `src`'s split, in clip order: computed on `workers` processes (default: every core)
    the first time, then reused for the life of the process (keyed by the settings that define the states;
    states do not depend on `image_size`). Identical to what `src.state(i)` computes on demand."""
    key = (src.seed, tuple(int(i) for i in src.identities), src.clips_per_identity, src.num_frames_per_clip,
           src.pose_scale)
    states = _PRELOADED.get(key)
    if states is not None:
        return states
    import multiprocessing as mp
    import os

    t0 = time.perf_counter()
    workers = max(1, int(workers or os.cpu_count() or 1))
    chunks = [c for c in np.array_split(src.identities, workers * 8) if len(c)]
    jobs = [(src.seed, c, src.clips_per_identity, src.num_frames_per_clip, src.pose_scale) for c in chunks]
    if workers > 1 and "fork" in mp.get_all_start_methods():
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_clip_states, jobs)
    else:
        parts = [_clip_states(j) for j in jobs]
    states = [st for part in parts for st in part]
    _PRELOADED[key] = states
    log.info("synthetic %s split: %d clip states preloaded in %.1f s on %d process(es)", src.split, len(states),
             time.perf_counter() - t0, workers)
    return states


class SyntheticSource:
    """Seeded procedural talking-face clips (a `ClipSource`); nothing is read from disk.

    Args:
        image_size: output size S in pixels (any size >= 16; 56, 64, 112, 224 are the model's).
        num_identities: identities before the split (ids 0..num_identities-1).
        clips_per_identity: clips per identity.
        num_frames: video frames per clip (25 fps; 125 = 5 s).
        split: "train", "test" or "all"; identities are assigned to test by a seeded hash with probability
            `test_fraction`, so train and test identities are disjoint.
        test_fraction: fraction of identities in the test split.
        seed: dataset seed; every pixel, sample and factor is a function of (seed, identity, clip, frame).
        pose_scale: multiplies the head-pose amplitude (0 = always frontal).
        cache_clips: how many clip states (trajectories + audio + mel) to keep per process.
        preload: compute every clip state of the split once, at construction, on all cores, and keep them for the
            process (`preload_states`): a stage's loader then only renders pixels (and mels). Built once per
            process and reused by every source with the same settings (each stage of a chain builds its own) and
            by forked loader workers. About 40 KB per clip, plus 160 KB for each clip whose mel a process computes
            (it stays with the state: at most the whole split, 260 MB at the defaults, in a lip or emo loader).
    """

    def __init__(self, image_size: int = 64, num_identities: int = 500, clips_per_identity: int = 4,
                 num_frames: int = 125, split: str = "train", test_fraction: float = 0.2, seed: int = 0,
                 pose_scale: float = 1.0, cache_clips: int = 64, preload: bool = False):
        if split not in ("train", "test", "all"):
            raise ValueError(f"SyntheticSource: split must be 'train', 'test' or 'all', got {split!r}")
        if int(image_size) < 16:
            raise ValueError(f"SyntheticSource: image_size must be >= 16 pixels, got {image_size}")
        if int(num_frames) < 8:
            raise ValueError(f"SyntheticSource: num_frames must be >= 8 (a 20-mel window needs 5 frames after the "
                             f"2-frame offset), got {num_frames}")
        self.image_size = int(image_size)
        self.num_frames_per_clip = int(num_frames)
        self.clips_per_identity = int(clips_per_identity)
        self.seed = int(seed)
        self.split = split
        self.pose_scale = float(pose_scale)
        ids = np.arange(int(num_identities))
        is_test = np.array([identity_is_test(i, test_fraction, salt=f"synthetic:{self.seed}") for i in ids], bool)
        self.identities = ids if split == "all" else ids[is_test] if split == "test" else ids[~is_test]
        if len(self.identities) == 0:
            raise ValueError(f"SyntheticSource: split {split!r} holds no identity (num_identities={num_identities}, "
                             f"test_fraction={test_fraction}); use more identities")
        self._cache: OrderedDict[int, ClipState] = OrderedDict()
        self._cache_size = int(cache_clips)
        self._idents: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pinned: list[ClipState] | None = preload_states(self) if preload else None

    # ---- ClipSource ----
    def __len__(self) -> int:
        return len(self.identities) * self.clips_per_identity

    def num_frames(self, i: int) -> int:
        self._check(i)
        return self.num_frames_per_clip

    def identity(self, i: int) -> int:
        self._check(i)
        return int(self.identities[int(i) // self.clips_per_identity])

    def frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        st = self.state(i)
        idx = self._frame_idx(i, idx)
        return render_frames(st.ident, st.params[idx], self.image_size)

    def mel(self, i: int) -> np.ndarray:
        st = self.state(i)
        if st._mel is None:
            from pdfgc.data.audio import melspectrogram

            wav = st._audio if st._audio is not None else self._synthesize(st)  # not kept: 320 KB per clip
            st._mel = melspectrogram(wav, name=f"synthetic clip {i}")
        return st._mel

    def factors(self, i: int, idx: Sequence[int]) -> dict[str, np.ndarray]:
        st = self.state(i)
        idx = self._frame_idx(i, idx)
        return {k: v[idx].copy() for k, v in st.factors.items()}

    # ---- extras ----
    def audio(self, i: int) -> np.ndarray:
        """float32 `(num_frames * 640,)` 16 kHz waveform of clip `i` (exactly the clip's duration)."""
        st = self.state(i)
        if st._audio is None:
            st._audio = self._synthesize(st)
        return st._audio

    def _synthesize(self, st: ClipState) -> np.ndarray:
        return synthesize_speech(st.plan, self.num_frames_per_clip * SAMPLE_RATE // FPS, st.f0, st.tract, st.keys)

    def state(self, i: int) -> ClipState:
        """The (cached) `ClipState` of clip `i`."""
        self._check(i)
        i = int(i)
        if self._pinned is not None:
            return self._pinned[i]
        st = self._cache.get(i)
        if st is not None:
            self._cache.move_to_end(i)
            return st
        ident_id = self.identity(i)
        ident = self._idents.get(ident_id)
        if ident is None:
            ident = make_identity(self.seed, ident_id)
            self._idents[ident_id] = ident
            if len(self._idents) > 4 * self._cache_size:
                self._idents.popitem(last=False)
        st = make_clip_state(self.seed, ident_id, i % self.clips_per_identity, self.num_frames_per_clip, ident,
                             self.pose_scale)
        self._cache[i] = st
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return st

    def render(self, i: int, idx: Sequence[int], **overrides) -> np.ndarray:
        """Render frames of clip `i` with some per-frame factors replaced (for tests and swap grids).

        overrides: `pose` (6,), `eye_open` (2,), `gaze` (2,), `mouth` (2,), `expr` (5,) (smile, brow inner, brow
        outer, squint, widen; `EMOTION_EXPR[class] * intensity`), each per clip (k,) or per frame (n, k).
        """
        st = self.state(i)
        idx = self._frame_idx(i, idx)
        p = st.params[idx].copy()
        n = len(idx)
        if "pose" in overrides:
            pose = np.broadcast_to(np.asarray(overrides["pose"], np.float64), (n, 6))
            a = st.ident[I_A]
            depth = CAMERA_DISTANCE * (1.0 + pose[:, 5])
            p[:, F_R:F_R + 9] = _rotation(pose[:, 0], pose[:, 1], pose[:, 2]).reshape(n, 9)
            p[:, F_C] = pose[:, 3] * a * depth / st.ident[I_FOCAL]
            p[:, F_C + 1] = (st.ident[I_CY] + pose[:, 4] * a) * depth / st.ident[I_FOCAL]
            p[:, F_C + 2] = depth
        for key, sl in (("eye_open", slice(F_OPEN_L, F_OPEN_R + 1)), ("gaze", slice(F_GX, F_GY + 1)),
                        ("mouth", slice(F_MOPEN, F_MWIDTH + 1)), ("expr", slice(F_SMILE, F_WIDEN + 1))):
            if key in overrides:
                p[:, sl] = np.asarray(overrides[key], np.float64)
        return render_frames(st.ident, p, self.image_size)

    def _check(self, i: int) -> None:
        if not 0 <= int(i) < len(self):
            raise IndexError(f"SyntheticSource({self.split}): clip index {i} out of range [0, {len(self)})")

    def _frame_idx(self, i: int, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_frames_per_clip):
            raise IndexError(f"SyntheticSource: frame indices of clip {i} must lie in [0, {self.num_frames_per_clip})"
                             f", got [{idx.min()}, {idx.max()}]")
        return idx


# ================================================================================================================
# preview: `python -m pdfgc.data.synthetic --grid grid.png --video sample.mp4`

def preview_grid(size: int = 112, identities: int = 4, columns: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 image: `identities` rows of frames across a clip, then one row of single-factor edits of identity 0
    (emotions at full intensity, a blink, gaze left, yaw right, pitch up)."""
    src = SyntheticSource(image_size=size, num_identities=max(identities * 3, 8), split="all", seed=seed)
    rows = []
    for r in range(identities):
        clip = r * src.clips_per_identity
        rows.append(np.concatenate(list(src.frames(clip, np.linspace(3, src.num_frames(clip) - 3,
                                                                          columns).astype(int))), axis=1))
    keep = dict(mouth=(0.15, 0.5), eye_open=(1.0, 1.0), gaze=(0.0, 0.0), pose=np.zeros(6))
    edits = [dict(expr=EMOTION_EXPR[k]) for k in range(len(EMOTIONS))]
    edits += [dict(eye_open=(0.05, 0.05), expr=EMOTION_EXPR[0]), dict(gaze=(-0.9, 0.0), expr=EMOTION_EXPR[0]),
              dict(pose=[0.45, 0, 0, 0, 0, 0], expr=EMOTION_EXPR[0]), dict(pose=[0, 0.3, 0, 0, 0, 0],
                                                                          expr=EMOTION_EXPR[0])]
    tiles = [src.render(0, [20], **{**keep, **e})[0] for e in edits[:columns]]
    rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def preview_stages(size: int = 112, seed: int = 0) -> np.ndarray:
    """uint8 image, one row per stage sample: motion (app, drv, drv_aug), eye (anchor, positive, negative),
    lip (N = 5 frames at distinct offsets), emo (app, then the K = 5 window frames)."""
    from pdfgc.data.stage_datasets import EmoDataset, EyeDataset, LipDataset, MotionDataset

    src = SyntheticSource(image_size=size, num_identities=20, seed=seed)
    cols = 6

    def row(tensors):
        tiles = [((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8) for t in tensors]
        tiles += [np.full((size, size, 3), 255, np.uint8)] * (cols - len(tiles))
        return np.concatenate(tiles, axis=1)

    ds = {st: cls(src, length=1, seed=seed) for st, cls in (("motion", MotionDataset), ("eye", EyeDataset),
                                                           ("lip", LipDataset), ("emo", EmoDataset))}
    m, e, lp, em = ds["motion"][0], ds["eye"][1], ds["lip"][2], ds["emo"][3]
    rows = [row([m["app"], m["drv"], m["drv_aug"]]), row([e["anchor"], e["positive"], e["negative"]]),
            row(list(lp["frames"])), row([em["app"], *em["frames"]])]
    return np.concatenate(rows, axis=0)


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pdfgc.data.synthetic",
                                 description="Write a preview grid and/or a sample clip (mp4 with its audio).")
    ap.add_argument("--grid", help="output PNG of a face grid")
    ap.add_argument("--video", help="output mp4 of one clip with its synthetic speech")
    ap.add_argument("--stages", help="output PNG of one sample per stage dataset")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--video-size", type=int, default=224)
    ap.add_argument("--clip", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.grid:
        import imageio.v3 as iio

        iio.imwrite(args.grid, preview_grid(args.size, seed=args.seed))
        print(f"wrote {args.grid}")
    if args.stages:
        import imageio.v3 as iio

        iio.imwrite(args.stages, preview_stages(args.size, seed=args.seed))
        print(f"wrote {args.stages}")
    if args.video:
        from pdfgc.data.video import write_video

        src = SyntheticSource(image_size=args.video_size, split="all", seed=args.seed)
        write_video(args.video, src.frames(args.clip, range(src.num_frames(args.clip))), fps=FPS,
                    audio=src.audio(args.clip))
        print(f"wrote {args.video}")


if __name__ == "__main__":
    main()
