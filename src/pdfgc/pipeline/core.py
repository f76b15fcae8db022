"""`Pipeline`: the PD-FGC inference API (docs/ARCHITECTURE.md "Inference API"); no Lightning/Hydra/wandb here.

Numerics follow the reference by default (SPEC 1.4-1.8):
    N = T_mel//4 - 4 output frames; frame i uses the mel window of video frame i+2;
    drivers: first two frames dropped, output frame i uses driver frame (i mod L);
    lip = 1.5 * audio lip code, Gaussian-smoothed over time (3 taps, sigma 1, zero padding);
    pose = 3-tap moving average (edge frames average the two that exist); eye, emo = 1.2 * code;
    controls that are off -> zeros (mouth, emo, headpose) or the eye masks (blink, gaze);
    style = [f_app | lip | emo | eye | pose] (2590), spatial input = f_sp, tanh image.
Faster than the reference by construction (DESIGN 9): each distinct driver frame is encoded once, and only for the
controls that are on; the audio encoder runs only when the mouth control is on; the generator gets whole batches.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pdfgc.constants import EMO_SCALE, EYE_SCALE, FPS, FRAME_OFFSET, LIP_SCALE, SAMPLE_RATE
from pdfgc.models.latent import Controls, ControlsLike, apply_controls, assemble_style
from pdfgc.pipeline.controls import driver_indices, leading_drop, smooth_lip, smooth_pose
from pdfgc.pipeline.errors import PipelineError
from pdfgc.pipeline.settings import CALL_FIELDS, PIPELINE_FIELDS, InferenceSettings, cpu_has_native_bf16

log = logging.getLogger(__name__)

NETWORKS = ("appearance", "motion", "audio", "generator")


@dataclass
class PipelineOutput:
    """Result of one `Pipeline.__call__`.

    frames       uint8 (N, H, W, 3) RGB output frames: the whole photo / video frame (H x W) with paste-back,
                 else the generated S x S crops (S = model image size; 224 for the released model); None when the
                 frames were written to `out` and not kept (`return_frames`)
    fps          frames per second of `frames` (25)
    audio        float32 mono samples of the ORIGINAL audio at `sample_rate` (what gets muxed)
    sample_rate  16000
    panel        uint8 (N, S, 5S, 3) reference layout [appearance | generated | pose | exp | eye] or None
    controls     names of the controls that were on
    timings      seconds spent per network (appearance, motion, audio, generator) and in total
    frame_count  number of output frames (also when `frames` is None)
    pasted       whether the frames were pasted back into the source photo / video
    path         the mp4 written, or None
    frame_shape  (H, W, 3) of the written / returned frames (the panel's with layout=panel)
    """

    frames: np.ndarray | None
    fps: float
    audio: np.ndarray
    sample_rate: int = SAMPLE_RATE
    panel: np.ndarray | None = None
    controls: tuple[str, ...] = ()
    timings: dict = field(default_factory=dict)
    frame_count: int | None = None
    pasted: bool = False
    path: Path | None = None
    frame_shape: tuple | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0]) if self.frames is not None else int(self.frame_count or 0)


def _content_key(a: np.ndarray) -> bytes:
    """Content hash of one frame's pixels (identical pixels -> identical motion codes, so encode once)."""
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


def _frame_key(frame: torch.Tensor) -> bytes:
    """`_content_key` of a driver frame tensor (on any device)."""
    return _content_key(frame.detach().cpu().numpy())


class DriverFrames:
    """Driver frames kept as aligned uint8 crops `(T, H, W, 3)` and preprocessed (`ref_preprocess`, per frame, as the
    reference does) to float `(3, S, S)` only when a batch needs them. A driver then costs 150 KB per 224 px frame
    instead of 600 KB of float32: `Pipeline.__call__` passes long videos this way. Supports what
    `Pipeline.generate` needs of a driver tensor: `shape` / `ndim` / `len`, contiguous slices (views), `take(indices)`
    -> float (k, 3, S, S), and `key(i)`, the content hash of frame i (identical frames are encoded once)."""

    ndim = 4

    def __init__(self, frames: np.ndarray, size: int, start: int = 0, stop: int | None = None):
        self.frames = frames
        self.size = int(size)
        self.start = int(start)
        self.stop = len(frames) if stop is None else int(stop)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.stop - self.start, 3, self.size, self.size)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, item):
        if not isinstance(item, slice):
            raise TypeError("DriverFrames: index with a slice (a view) or use take(indices) for float frames")
        a, b, step = item.indices(len(self))
        if step != 1:
            raise ValueError("DriverFrames: only contiguous slices")
        return DriverFrames(self.frames, self.size, self.start + a, self.start + max(a, b))

    def take(self, indices) -> torch.Tensor:
        from pdfgc.pipeline._align_adapter import ref_preprocess

        return ref_preprocess(self.frames[[self.start + int(i) for i in indices]], size=self.size)

    def key(self, i: int) -> bytes:
        return _content_key(self.frames[self.start + int(i)])


def _driver_key(t, i: int) -> bytes:
    return t.key(i) if isinstance(t, DriverFrames) else _frame_key(t[i])


def _driver_frames(t, indices) -> torch.Tensor:
    """Float (k, 3, S, S) frames `indices` of a driver tensor or `DriverFrames`."""
    return t.take(indices) if isinstance(t, DriverFrames) else t[list(indices)]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B,3,S,S) in [-1,1] -> uint8 (B,S,S,3) by truncation of (x+1)/2*255, like the reference (SPEC 1.9)."""
    y = ((x.detach().float().cpu() + 1) * 0.5 * 255).clamp_(0, 255)
    return y.to(torch.uint8).permute(0, 2, 3, 1).numpy()


class Pipeline:
    """PD-FGC inference: portrait + speech + driving videos -> talking-head frames.

    Args:
        models: a `pdfgc.models.bundle.PDFGCModels` (attributes appearance, motion, audio, generator; `code_dims`
            and `image_size` give the code widths and the image side).
        settings: an `InferenceSettings` (default: every default of docs/inference.md).
        **overrides: settings to change, by name, e.g. `device="cuda"`, `batch_size=16`, `precision="bf16"`,
            `seed=...`, `noise_mode="const"`, or the per-call defaults (`controls`, `layout`, `aligned`, ...).
            Checked once, here (`InferenceSettings`): a bad value is a `PipelineError`, an unknown name a TypeError.

    The networks run on `settings.device` ("auto": CUDA when available) at `settings.precision` ("fp32", the
    reference's arithmetic; "bf16" on CPUs with AVX512-BF16/AMX and recent GPUs, about 1.8x faster on such a CPU,
    see docs/inference.md for the measured image difference; "fp16" on CUDA). Reduced precision applies to the
    networks' arithmetic through torch.autocast; everything between the networks stays float32.
    """

    def __init__(self, models, settings: InferenceSettings | None = None, **overrides):
        if settings is None:
            settings = InferenceSettings()
        elif not isinstance(settings, InferenceSettings):
            raise TypeError(f"Pipeline: settings must be an InferenceSettings, got {type(settings).__name__} "
                            "(pass single settings by name, e.g. Pipeline(models, device='cpu'))")
        self.settings = settings.replace(**overrides)
        self.device = self.settings.torch_device
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            # once per Pipeline: its settings are fixed from here on
            log.warning("precision=bf16: this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX), so bf16 "
                        "will likely be slower than fp32; precision=fp32 is recommended here")
        self.models = models.eval().to(self.device)
        self.last_timings: dict[str, float] = {}
        self.last_encoded = 0  # driver images encoded by the last generate() (for benchmarks and tests)

    # settings that fix how the networks run (read-only: build another Pipeline to change them)
    batch_size = property(lambda self: self.settings.batch_size, doc="frames per network call")
    precision = property(lambda self: self.settings.precision, doc="fp32 | bf16 | fp16")
    seed = property(lambda self: self.settings.seed, doc="seed of the generator's noise maps")
    noise_mode = property(lambda self: self.settings.noise_mode, doc="cached | const | none")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path, settings: InferenceSettings | None = None, **overrides) -> "Pipeline":
        """Load the four networks from `path`: the released folder (appearance_model.pth, motion_model.pth,
        audio_model.pth, generator_model.pth) or a pdfgc export (`PDFGCModels.save_pretrained`). The settings are
        checked before anything is loaded."""
        from pdfgc.models.bundle import PDFGCModels

        settings = (InferenceSettings() if settings is None else settings).replace(**overrides)
        # the format is detected by the loader; missing/corrupt files raise CheckpointError naming the file
        models = PDFGCModels.from_pretrained(Path(path))
        return cls(models, settings)

    @property
    def image_size(self) -> int:
        """Side S of the model's images (224 for the released networks)."""
        return int(self.models.image_size)

    @property
    def code_dims(self) -> dict[str, int]:
        """Widths of the style parts from the loaded model: {"app", "lip", "emo", "eye", "pose"}."""
        return self.models.code_dims

    # ------------------------------------------------------------------ helpers
    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _tick(self, name: str, t0: float) -> float:
        self._sync()
        t1 = time.perf_counter()
        self.last_timings[name] = self.last_timings.get(name, 0.0) + (t1 - t0)
        return t1

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """Aligned uint8 crops `(T,224,224,3)` -> model input `(T,3,S,S)` in [-1,1] through the reference's
        resize/crop/resize/normalise (`pdfgc.data.align.ref_preprocess`), the last resize going to S."""
        from pdfgc.pipeline._align_adapter import ref_preprocess

        return ref_preprocess(frames, size=self.image_size)

    def _amp(self):
        """Context for network calls: torch.autocast at the pipeline's precision (nothing for fp32)."""
        dtype = self.settings.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _batched(self, fn, x: torch.Tensor, bar=None):
        outs = []
        for i in range(0, x.shape[0], self.batch_size):
            with self._amp():
                outs.append(fn(x[i:i + self.batch_size].to(self.device)))
            if bar is not None:
                bar.update(min(self.batch_size, x.shape[0] - i))
        return outs

    def _check_driver(self, t, name: str):
        s = self.image_size
        if not isinstance(t, (torch.Tensor, DriverFrames)) or t.ndim != 4 or tuple(t.shape[1:]) != (3, s, s) \
                or t.shape[0] < 1:
            shape = tuple(t.shape) if isinstance(t, (torch.Tensor, DriverFrames)) else type(t).__name__
            raise PipelineError(f"{name}: expected a float tensor (L,3,{s},{s}) with L >= 1, got {shape}")
        return t

    # ------------------------------------------------------------------ tensor core
    @torch.inference_mode()
    def encode_motion(self, drivers: dict[str, torch.Tensor | None], num_frames: int, controls: Controls,
                      drop_leading: bool = True) -> dict[str, torch.Tensor]:
        """Per-output-frame raw motion codes from the drivers of the controls that are on.

        drivers: {"pose": (Lp,3,S,S)|None, "exp": ..., "eye": ...} float tensors or `DriverFrames` (made into
        float frames batch by batch); controls: a `Controls` (parsed by the caller). Returns {"pose": (N,pose),
        "emo": (N,emo), "eye": (N,eye)} for the controls that are on (unscaled, unsmoothed). Every distinct frame
        is encoded once: only the first min(N, L) frames after the leading drop are ever used, and frames with
        identical content (the same video given for several controls, a static expression clip of repeated frames)
        share one encoding -- the reference encodes three images per output frame (SPEC 1.5).
        """
        if not isinstance(controls, Controls):
            raise TypeError(f"encode_motion: controls must be a Controls (parsed once at the boundary, "
                            f"Controls.parse), got {type(controls).__name__}")
        need = {"pose": controls.needs_pose, "exp": controls.needs_exp, "eye": controls.needs_eye}
        what = {"pose": "headpose", "exp": "emo", "eye": "blink/gaze"}
        pool: list[tuple] = []  # (driver, frame index) of every distinct frame, materialised batch by batch
        row_of: dict[bytes, int] = {}
        rows: dict[str, torch.Tensor] = {}
        for name, on in need.items():
            if not on:
                continue
            t = drivers.get(name)
            if t is None:
                raise PipelineError(f"{name}: the {what[name]} control is on but no {name} driver was given; pass "
                                    f"{name}=VIDEO_OR_FOLDER_OR_IMAGE or switch the control off")
            t = self._check_driver(t, name)
            drop = leading_drop(t.shape[0]) if drop_leading else 0
            t = t[drop:]
            r = []
            for j in range(min(num_frames, t.shape[0])):  # indices i mod L < min(N, L): never encode unused frames
                key = _driver_key(t, j)
                if key not in row_of:
                    row_of[key] = len(pool)
                    pool.append((t, j))
                r.append(row_of[key])
            rows[name] = torch.as_tensor(r, dtype=torch.long)[torch.from_numpy(driver_indices(num_frames, t.shape[0]))]
        codes: dict[str, torch.Tensor] = {}
        if not pool:
            return codes
        t0 = time.perf_counter()
        # channels-last input lets oneDNN skip layout reorders in the FAN trunk (~13% faster on this CPU, same math)
        outs = []
        for i in range(0, len(pool), self.batch_size):
            x = torch.cat([_driver_frames(t, [j]) for t, j in pool[i:i + self.batch_size]]).to(self.device)
            with self._amp():
                outs.append(self.models.motion(x.contiguous(memory_format=torch.channels_last))[:3])
        pose = torch.cat([o[0] for o in outs]).float()
        eye = torch.cat([o[1] for o in outs]).float()
        emo = torch.cat([o[2] for o in outs]).float()
        self._tick("motion", t0)
        self.last_encoded = len(pool)
        for name, r in rows.items():
            r = r.to(pose.device)
            if name == "pose":
                codes["pose"] = pose[r]
            elif name == "exp":
                codes["emo"] = emo[r]
            else:
                codes["eye"] = eye[r]
        return codes

    def generate(self, source: torch.Tensor, mel: torch.Tensor, pose: torch.Tensor | None = None,
                 exp: torch.Tensor | None = None, eye: torch.Tensor | None = None, controls: ControlsLike = None,
                 drop_leading: bool = True, progress: bool = False, return_style: bool = False,
                 as_uint8: bool = False):
        """Tensor-level core (no I/O, no alignment).

        Args:
            source: (1,3,S,S) appearance image in [-1,1] (already reference-preprocessed).
            mel: (N,1,80,20) mel windows, one per output frame (`pdfgc.data.audio`).
            pose, exp, eye: (L,3,S,S) driver frames in [-1,1], or None for a control that is off. Frames with
                identical pixels (the same clip for several controls, repeated frames) are encoded once.
            controls: a `Controls`, or user input for `Controls.parse` ("all", ["mouth", "gaze"], [] ...); None =
                the pipeline's `settings.controls` (default all on).
            drop_leading: drop the first two driver frames like the reference (SPEC 1.5).
            progress: a progress bar over the generated frames (the tensor-level core is quiet by default).
            return_style: also return the (N, style_dim) style vectors fed to the generator.
            as_uint8: return uint8 (N,S,S,3) frames (`to_uint8`, batch by batch: a quarter of the memory of the
                float images for long audio).
        Returns:
            (N,3,S,S) float32 images in [-1,1] on the CPU, or uint8 (N,S,S,3) frames with `as_uint8` (and the style
            when `return_style`).
        """
        controls = self.settings.controls if controls is None else Controls.parse(controls)
        return self._generate(source, mel, {"pose": pose, "exp": exp, "eye": eye}, controls, drop_leading,
                              progress, return_style, as_uint8)

    @torch.inference_mode()
    def _generate(self, source: torch.Tensor, mel: torch.Tensor, drivers: dict, controls: Controls,
                  drop_leading: bool, progress: bool, return_style: bool, as_uint8: bool):
        """`generate` with parsed `controls` (a `Controls`, never user input)."""
        self.last_timings = {k: 0.0 for k in NETWORKS}
        self.last_encoded = 0
        t_start = time.perf_counter()
        style, f_sp = self._codes(source, mel, drivers, controls, drop_leading)
        n = int(style.shape[0])
        out = []
        for batch in self._render(style, f_sp, n, progress, as_uint8):
            out.append(batch)
        self.last_timings["total"] = time.perf_counter() - t_start
        out = np.concatenate(out) if as_uint8 else torch.cat(out)
        return (out, style.cpu()) if return_style else out

    @torch.inference_mode()
    def _codes(self, source: torch.Tensor, mel: torch.Tensor, drivers: dict, controls: Controls,
               drop_leading: bool):
        """(style (N, style_dim), f_sp) of a run: every network but the generator."""
        if not isinstance(controls, Controls):
            raise TypeError(f"Pipeline._generate: controls must be a Controls, got {type(controls).__name__}")
        if mel.ndim != 4 or mel.shape[1] != 1:
            raise PipelineError(f"mel: expected (N,1,80,20) windows, got {tuple(mel.shape)}")
        n = int(mel.shape[0])
        if n < 1:
            raise PipelineError("mel: no audio windows (the audio is too short for one frame)")
        s = self.image_size
        if source.ndim == 3:
            source = source[None]
        if source.shape[1:] != (3, s, s):
            raise PipelineError(f"source: expected (1,3,{s},{s}), got {tuple(source.shape)}")
        dims = self.code_dims
        m = self.models

        t0 = time.perf_counter()
        with self._amp():
            f_app, f_sp = m.appearance(source[:1].to(self.device))
        t0 = self._tick("appearance", t0)

        if controls.needs_audio:
            outs = self._batched(lambda x: m.audio(x)[1], mel)
            lip = torch.cat(outs).float() * LIP_SCALE
            lip = smooth_lip(lip)
        else:
            lip = torch.zeros(n, dims["lip"], device=self.device)
        self._tick("audio", t0)

        codes = self.encode_motion(drivers, n, controls, drop_leading)
        pose_c = smooth_pose(codes["pose"]) if "pose" in codes else torch.zeros(n, dims["pose"], device=self.device)
        emo_c = codes["emo"] * EMO_SCALE if "emo" in codes else torch.zeros(n, dims["emo"], device=self.device)
        eye_c = codes["eye"] * EYE_SCALE if "eye" in codes else torch.zeros(n, dims["eye"], device=self.device)
        lip, emo_c, eye_c, pose_c = apply_controls(lip, emo_c, eye_c, pose_c, controls)
        return assemble_style(f_app.float().expand(n, -1), lip, emo_c, eye_c, pose_c), f_sp

    def _render(self, style: torch.Tensor, f_sp: torch.Tensor, n: int, progress: bool, as_uint8: bool,
                appearance: "DriverFrames | None" = None):
        """Run the generator batch by batch and yield each batch as it is ready: uint8 (b,S,S,3) frames with
        `as_uint8`, else float (b,3,S,S) on the CPU. Only the generator's own time is counted in its timing (the
        caller may encode frames between batches). `appearance`: per-frame appearance images (output frame i uses
        image i mod T), encoded batch by batch: their code replaces the style's appearance part and their spatial
        feature replaces `f_sp`."""
        m = self.models
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="pdfgc generate", unit="frame", leave=False)
        # "cached" noise maps are drawn once, on the generator's first run, and reused for every later frame (SPEC
        # 1.10); drawing them from a seeded CPU generator makes them independent of the device and the global RNG
        rng = torch.Generator(device="cpu").manual_seed(self.seed)
        try:
            for i in range(0, n, self.batch_size):
                b = min(self.batch_size, n - i)
                st_b, sp_b = style[i:i + b], f_sp.expand(b, -1, -1, -1)
                if appearance is not None:
                    t0 = time.perf_counter()
                    x = appearance.take([(i + k) % len(appearance) for k in range(b)]).to(self.device)
                    with torch.inference_mode(), self._amp():
                        app_b, sp_b = m.appearance(x)
                    st_b = st_b.clone()
                    st_b[:, :app_b.shape[1]] = app_b.float()
                    self._tick("appearance", t0)
                t0 = time.perf_counter()
                with torch.inference_mode(), self._amp():
                    img = m.generator(st_b, sp_b, noise_mode=self.noise_mode, rng=rng)
                if isinstance(img, (tuple, list)):
                    img = img[0]
                batch = to_uint8(img) if as_uint8 else img.float().cpu()
                self._tick("generator", t0)
                if bar is not None:
                    bar.update(b)
                yield batch
        finally:
            if bar is not None:
                bar.close()

    # ------------------------------------------------------------------ file/array level
    def __call__(self, source, audio, pose=None, exp=None, eye=None, *, out=None, stream: bool = False,
                 return_frames: bool | None = None, **overrides):
        """Generate a talking head from files or arrays.

        Args:
            source: a photo (path or uint8 array; raw photos are aligned and, with `paste_back`, the output is the
                whole photo), an aligned 224x224 crop (the output is the crop), or a VIDEO path: the video is dubbed
                (output frame i starts from video frame i mod T; pose, eyes and emotion follow the video itself
                unless pose/exp/eye are given; pasted back at the video's resolution).
            audio: audio file path or float32 16 kHz samples; gives N = 25*T - 3 frames (SPEC 1.4).
            pose, exp, eye: drivers (video, folder of frames, image, uint8 array) or None when their controls
                are off. The same path given twice is loaded and encoded once.
            out: optional .mp4 path, checked before any work; frames are encoded as they are generated and the
                file appears atomically at the end, labelled as synthetic unless `watermark=False`.
            stream: return a `PipelineStream` (an iterator over the output frames, generated batch by batch)
                instead of running to the end; nothing is written unless you call its `save(path)`.
            return_frames: keep the frames in the returned `PipelineOutput` (default: only when `out` is None, so
                that writing a long video keeps memory flat).
            **overrides: per-call settings (default: this pipeline's `settings`), checked once by
                `InferenceSettings`:
                controls   e.g. ["all"], ["mouth", "headpose"], "mouth,gaze", [] (static canonical face), a Controls;
                layout     "video" (generated frames) or "panel" (also the reference's 5-panel frames in `.panel`);
                sync_fix   delay the video by 2 frames so the mouth does not lead the audio by ~80 ms as in the
                           reference (off = faithful);
                paste_back paste the face back into the raw photo / video frame (default True);
                watermark  label written files as synthetic (default True);
                aligned    "auto" | True | False; landmarks: "dlib" | "face_alignment" (+ landmark_weights folder);
                progress   a progress bar.
        Returns:
            PipelineOutput, or a PipelineStream with `stream=True`.
        """
        fixed = sorted(set(overrides) - set(CALL_FIELDS))
        if fixed:
            where = [k for k in fixed if k in PIPELINE_FIELDS]
            raise TypeError(f"Pipeline.__call__: unexpected setting(s) {fixed}; "
                            + (f"{', '.join(where)} are fixed when the Pipeline is built "
                               f"(Pipeline(models, {where[0]}=...)); " if where else "")
                            + f"per call: {', '.join(CALL_FIELDS)}")
        s = self.settings.replace(**overrides)
        if out is not None:
            from pdfgc.pipeline import inputs

            out = inputs.check_output_path(out)
        drivers = {"pose": pose, "exp": exp, "eye": eye}
        if stream:
            if out is not None:
                raise TypeError("Pipeline.__call__: give either out=PATH or stream=True (then PipelineStream.save)")
            return self._open_stream(source, audio, drivers, s)
        if return_frames is None:
            return self._run(source, audio, drivers, s, out)
        return self._run(source, audio, drivers, s, out, return_frames=return_frames)

    def _run(self, source, audio, drivers: dict, s: InferenceSettings, out, return_frames=None) -> PipelineOutput:
        st = self._open_stream(source, audio, drivers, s)
        keep = out is None if return_frames is None else bool(return_frames)
        frames, panel = ([], []) if keep else (None, None)

        def tap(it):
            for f, p in it:
                if keep:
                    frames.append(f)
                    if p is not None:
                        panel.append(p)
                yield f, p

        if out is not None:
            st._save(out, tap(st._pairs()))
        else:
            for _ in tap(st._pairs()):
                pass
        return PipelineOutput(frames=np.stack(frames) if keep else None, fps=st.fps, audio=st.audio,
                              panel=np.stack(panel) if keep and panel else None, controls=st.controls,
                              timings=dict(self.last_timings), frame_count=st.num_frames,
                              pasted=st.pasted, path=out, frame_shape=st.frame_shape)

    def stream(self, source, audio, pose=None, exp=None, eye=None, **overrides) -> "PipelineStream":
        """`self(source, audio, ..., stream=True)`: the output frames as an iterator (see `PipelineStream`)."""
        return self(source, audio, pose, exp, eye, stream=True, **overrides)

    def _open_stream(self, source, audio, drivers: dict, s: InferenceSettings) -> "PipelineStream":
        """Load and check every input, run every network but the generator; the generator runs as the returned
        stream is consumed."""
        from pdfgc.pipeline import inputs
        from pdfgc.pipeline import source as source_mod
        from pdfgc.pipeline._align_adapter import mel_windows

        controls = s.controls
        wav = inputs.load_audio(audio)
        mel = mel_windows(wav, need_speech=controls.mouth,
                          name=str(audio) if isinstance(audio, (str, Path)) else "audio array")
        n = int(mel.shape[0])

        log.info("audio: %.2f s -> %d frames at %d fps", len(wav) / SAMPLE_RATE, n, FPS)
        read = dict(aligned=s.aligned, landmarks=s.landmarks, landmark_weights=s.landmark_weights)
        src = source_mod.load(source, max_frames=n, **read)
        if src.video:
            log.info("source: dubbing a video of %d frames (looped or cut to %d output frames)", len(src.crops), n)
        cache: dict = {}
        drv = {}
        for name, on in (("pose", controls.needs_pose), ("exp", controls.needs_exp), ("eye", controls.needs_eye)):
            value = drivers[name]
            if value is None and src.video:
                # dubbing: the video drives itself; two leading copies of frame 0 are dropped like any driver's
                # first two frames (SPEC 1.5), so output frame i uses video frame i mod T, the frame it is pasted in
                if on or s.layout == "panel":
                    frames = np.concatenate([np.repeat(src.crops[:1], FRAME_OFFSET, 0), src.crops])
                    drv[name] = inputs.Driver(frames, "source-video", name)
                else:
                    drv[name] = None
                continue
            if value is None:
                if on:
                    raise PipelineError(f"{name}: this control is on ({', '.join(controls.names())}) but no {name} "
                                        f"driver was given; pass {name}=VIDEO_OR_FOLDER_OR_IMAGE or leave the "
                                        "control out of `controls`")
                drv[name] = None
                continue
            if not on and s.layout != "panel":
                drv[name] = None  # an off control needs no driver: do not even load it
                continue
            t0 = time.perf_counter()
            d = inputs.load_driver(value, name, cache=cache, **read)
            log.info("%s driver: %d frames ready in %.1f s", name, d.frames.shape[0], time.perf_counter() - t0)
            if d.frames.shape[0] <= FRAME_OFFSET:
                log.warning("%s driver has %d frame(s): it is held still (repeated) for all %d output frames",
                            name, d.frames.shape[0], n)
            drv[name] = d

        # drivers stay uint8 and are preprocessed batch by batch (DriverFrames); one per distinct driver, so the
        # core encodes each distinct frame once
        tensors: dict[str, DriverFrames] = {}
        by_key: dict[str, DriverFrames] = {}
        for name, d in drv.items():
            if d is None:
                continue
            if d.key not in by_key:
                # frames past N + 2 are never used (output frame i < N uses frame 2 + i mod (L - 2)); trimming
                # keeps the leading drop and the looping unchanged and saves work on long drivers
                by_key[d.key] = DriverFrames(d.frames[: n + FRAME_OFFSET], self.image_size)
            tensors[name] = by_key[d.key]
        src_t = self.preprocess(src.crops[:1])
        gen_in = {k: (tensors.get(k) if on else None) for k, on in
                  (("pose", controls.needs_pose), ("exp", controls.needs_exp), ("eye", controls.needs_eye))}
        self.last_timings = {k: 0.0 for k in NETWORKS}
        self.last_encoded = 0
        t_start = time.perf_counter()
        style, f_sp = self._codes(src_t, mel, gen_in, controls, drop_leading=True)
        paste = None
        if s.paste_back and src.can_paste and s.layout == "video":
            from pdfgc.pipeline.pasteback import PasteBack

            paste = PasteBack(self.image_size, smooth=True)
        panel_drivers = [tensors.get(k) for k in ("pose", "exp", "eye")] if s.layout == "panel" else None
        return PipelineStream(self, style, f_sp, src, src_t, paste, panel_drivers, wav, controls, s, t_start)


class PipelineStream:
    """The output of one run as an iterator of uint8 RGB frames (H, W, 3), generated batch by batch as it is
    consumed: the whole photo / video frame with paste-back, the S x S crop otherwise, the 5-panel frame with
    layout=panel. Known before iterating: `num_frames`, `fps`, `audio`, `sample_rate`, `frame_shape`,
    `controls`, `pasted`. `save(path)` encodes the (remaining) frames straight into an mp4 (atomic, labelled as
    synthetic unless the run's `watermark` is off). A stream is consumed once."""

    def __init__(self, pipe: "Pipeline", style, f_sp, src, src_t, paste, panel_drivers, wav, controls, s,
                 t_start: float):
        self._pipe, self._style, self._f_sp, self._src, self._src_t = pipe, style, f_sp, src, src_t
        self._paste, self._panel_drivers, self._s, self._t_start = paste, panel_drivers, s, t_start
        self.audio = wav
        self.fps = float(FPS)
        self.sample_rate = SAMPLE_RATE
        self.controls = controls.names()
        self.pasted = paste is not None
        self._n = int(style.shape[0])
        self.num_frames = self._n + (FRAME_OFFSET if s.sync_fix else 0)
        size = pipe.image_size
        if s.layout == "panel":
            self.frame_shape = (size, 5 * size, 3)
        elif self.pasted:
            self.frame_shape = tuple(src.frames.shape[1:])
        else:
            self.frame_shape = (size, size, 3)
        self._used = False

    def __iter__(self):
        return (f for f, _ in self._pairs())

    def _pairs(self):
        """Yield (output frame, panel frame or None); `frames` of a PipelineOutput are the crops/pasted frames and
        `panel` the reference layout, as before streaming."""
        if self._used:
            raise RuntimeError("PipelineStream: a stream is consumed once; call the pipeline again")
        self._used = True
        pipe, s, src = self._pipe, self._s, self._src
        lead = FRAME_OFFSET if s.sync_fix else 0
        i = 0
        per_frame = None
        if src.video and s.dub_appearance == "frame":
            per_frame = DriverFrames(src.crops, pipe.image_size)
        for batch in pipe._render(self._style, self._f_sp, self._n, s.progress, as_uint8=True,
                                  appearance=per_frame):
            panels = None
            if self._panel_drivers is not None:
                panels = make_panel(self._src_t, batch, self._panel_drivers, self._n, start=i)
            for k, face in enumerate(batch):
                t = (i + k) % len(src.crops)
                f = self._paste(src.frames[t], src.matrices[t], face) if self._paste is not None else face
                p = panels[k] if panels is not None else None
                reps = 1 + lead if i + k == 0 else 1
                for _ in range(reps):
                    yield f, p
            i += len(batch)
        pipe.last_timings["total"] = time.perf_counter() - self._t_start

    def save(self, path) -> Path:
        """Encode the frames into `path` (.mp4, H.264 + AAC with the run's audio) as they are generated."""
        from pdfgc.pipeline import inputs

        return self._save(inputs.check_output_path(path), self._pairs())

    def _save(self, path: Path, pairs) -> Path:
        from pdfgc.data.video import MediaError, VideoWriter

        panel = self._s.layout == "panel"
        mark = None
        meta = {}
        if self._s.watermark:
            from pdfgc import provenance

            mark = provenance.FrameMarker()
            meta = provenance.container_metadata()
        try:
            with VideoWriter(path, fps=self.fps, audio=self.audio, sample_rate=self.sample_rate,
                             metadata=meta) as w:
                for f, p in pairs:
                    frame = p if panel else f
                    w.write(mark(frame) if mark is not None else frame)
        except MediaError as e:
            raise PipelineError(f"out: {e}") from e
        return path


def make_panel(source: torch.Tensor, generated, drivers: list, n: int, drop_leading: bool = True,
               start: int = 0) -> np.ndarray:
    """Reference 5-panel frames [appearance | generated | pose | exp | eye] -> uint8 (len(generated), S, 5S, 3)
    (SPEC 1.9); `generated` holds output frames start, start+1, ... of a run of `n` frames.

    `generated`: float (N,3,S,S) images or uint8 (N,S,S,3) frames; drivers: float tensors, `DriverFrames` or None.
    Each driver panel shows the driver frame that output frame i used (i mod L after the leading drop); an absent
    driver is a black panel.
    """
    gen = generated if isinstance(generated, np.ndarray) else to_uint8(generated)
    s = gen.shape[1]
    app = to_uint8(source[:1].cpu())[0]
    k = gen.shape[0]
    out = np.zeros((k, s, 5 * s, 3), np.uint8)
    out[:, :, 0:s] = app
    out[:, :, s:2 * s] = gen
    for j, d in enumerate(drivers):
        if d is None:
            continue
        drop = leading_drop(d.shape[0]) if drop_leading else 0
        d = d[drop:]
        idx = driver_indices(n, d.shape[0])[start:start + k]
        uniq, inv = np.unique(idx, return_inverse=True)
        frames = np.concatenate([to_uint8(_driver_frames(d, uniq[a:a + 64]).cpu())
                                 for a in range(0, len(uniq), 64)])  # in chunks: no float copy of a long driver
        out[:, :, (2 + j) * s:(3 + j) * s] = frames[inv.reshape(-1)]
    return out


def write_output(result: PipelineOutput, out, layout: str = "video", watermark: bool = True) -> Path:
    """Write `result` as H.264 + AAC mp4 with the original audio (atomic: nothing half-written), labelled as
    synthetic (`pdfgc.provenance`: container metadata and an invisible watermark) unless `watermark=False`."""
    from pdfgc.data.video import MediaError, write_video

    frames = result.panel if layout == "panel" else result.frames
    if frames is None:
        raise PipelineError(f"nothing to write: the result holds no {'panel' if layout == 'panel' else 'frames'} "
                            "(call the pipeline with layout='panel', or with return_frames=True)")
    meta = {}
    if watermark:
        from pdfgc import provenance

        mark = provenance.FrameMarker()
        frames = (mark(f) for f in frames)
        meta = provenance.container_metadata()
    try:
        return write_video(out, frames, fps=result.fps, audio=result.audio, sample_rate=result.sample_rate,
                           metadata=meta)
    except MediaError as e:
        raise PipelineError(f"out: {e}") from e
