"""`InferenceSettings`: every inference setting with its default, written once, validated once.

The same object drives `python infer.py key=value ...` (registered as the Hydra structured config `infer_schema`
that configs/infer.yaml builds on, see `pdfgc.pipeline.cli`) and the Python API (`Pipeline(models, settings,
**overrides)`, `Pipeline.__call__(..., **overrides)`). Constructing it is the boundary where user input is parsed:
`controls` becomes a `Controls`, `aligned` one of "auto" / "true" / "false", and every value is checked (device,
precision, layout, noise mode, batch size, ...); a bad value is a `PipelineError` naming the key, the expected and
the actual value. Nothing further down re-checks or re-parses.

Importing this module imports torch but never Hydra or OmegaConf (the pipeline package stays light).
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

import torch

from pdfgc.constants import LANDMARK_BACKENDS, REFERENCE_BATCH, REFERENCE_SEED
from pdfgc.models.latent import Controls
from pdfgc.pipeline.errors import PipelineError

# network arithmetic: fp32 = the reference's; bf16/fp16 = torch.autocast around the four networks only (the
# post-processing between them -- scaling, smoothing, control masks -- stays float32)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = ("video", "panel")
NOISE_MODES = ("cached", "const", "none")
ALIGNED_MODES = ("auto", "true", "false")
DUB_APPEARANCE = ("first", "frame")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class InferenceSettings:
    """Settings of one inference run (the keys of `python infer.py key=value`; docs/inference.md has the table).

    Inputs (`ckpt` ... `out`) are used by infer.py; the Python API takes them as call arguments instead. After
    construction `controls` is a `Controls` and `aligned` is "auto", "true" or "false".
    """

    # inputs (infer.py)
    ckpt: Optional[str] = None          # released folder (four .pth) or a pdfgc export; required by infer.py
    audio: Optional[str] = None         # speech file; T seconds give N = 25*T - 3 frames; required by infer.py
    source: Optional[str] = None        # portrait photo, aligned crop, or a video to dub; required by infer.py
    pose: Optional[str] = None          # head-pose driver: video, folder of frames, image (headpose on)
    exp: Optional[str] = None           # expression driver (emo on)
    eye: Optional[str] = None           # eye driver (blink or gaze on)
    out: str = "result.mp4"             # output mp4 of infer.py (its folder must exist)
    # what is generated
    controls: Any = ("all",)            # any of mouth, blink, gaze, emo, headpose; [all]; [] = static face
    layout: str = "video"               # video | panel = [appearance|generated|pose|exp|eye]
    sync_fix: bool = False              # delay the video 2 frames (the reference's mouth leads the audio ~80 ms)
    paste_back: bool = True             # raw photo / video source: paste the face back into the whole frame
    watermark: bool = True              # label written videos as synthetic: invisible watermark + metadata
    dub_appearance: str = "first"       # dubbing a video: first (fixed reference frame + the video's motion) | frame
    # how inputs are read
    aligned: Any = "auto"               # auto: 224x224 inputs are aligned crops; true: never align; false: always
    landmarks: str = "dlib"             # landmark backend for alignment: dlib | face_alignment
    landmark_weights: Optional[str] = None  # folder of the landmark model's weights (face_alignment)
    # how the networks run
    device: str = "auto"                # auto (cuda when available; also None) | cpu | cuda | cuda:N | mps
    batch_size: int = REFERENCE_BATCH   # frames per network call (the output does not depend on it)
    precision: str = "fp32"             # fp32 (reference) | bf16 | fp16 (CUDA)
    seed: int = REFERENCE_SEED          # seeds the generator's cached noise maps (SPEC 1.10)
    noise_mode: str = "cached"          # cached (reference) | const (checkpoint buffers) | none
    progress: bool = True               # progress bar over the generated frames

    def __post_init__(self):
        # the one place where inference settings are parsed and checked
        set_ = object.__setattr__  # frozen: normalised values are written once, here
        set_(self, "controls", Controls.parse(self.controls))
        if self.device is None or isinstance(self.device, torch.device):
            set_(self, "device", "auto" if self.device is None else str(self.device))
        set_(self, "aligned", _parse_aligned(self.aligned))
        _one_of("layout", self.layout, LAYOUTS)
        _one_of("dub_appearance", self.dub_appearance, DUB_APPEARANCE)
        _one_of("noise_mode", self.noise_mode, NOISE_MODES)
        _one_of("precision", self.precision, tuple(PRECISIONS))
        _one_of("landmarks", self.landmarks, LANDMARK_BACKENDS)
        set_(self, "batch_size", _integer("batch_size", self.batch_size, minimum=1))
        set_(self, "seed", _integer("seed", self.seed))
        for key in ("sync_fix", "progress", "paste_back", "watermark"):
            if not isinstance(getattr(self, key), bool):
                raise PipelineError(f"{key}: expected true or false, got {getattr(self, key)!r}")
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise PipelineError(f"device: expected auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        _check_precision(self.precision, self.torch_device)

    @property
    def torch_device(self) -> torch.device:
        """The device the networks run on: "auto" is CUDA when available, else the CPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise PipelineError(f"device={self.device}: CUDA is not available on this machine; use device=cpu or "
                                "auto")
        if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise PipelineError(f"device={self.device}: this machine has {torch.cuda.device_count()} CUDA "
                                "device(s); use device=cuda:0 or auto")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise PipelineError(f"device={self.device}: MPS is not available on this machine; use device=cpu")
        return dev

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """dtype of torch.autocast around the networks (None = fp32, no autocast)."""
        return PRECISIONS[self.precision]

    def replace(self, **changes) -> "InferenceSettings":
        """A copy with `changes` (checked like a new object); an unknown key is a TypeError naming it."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown inference setting(s) {unknown}; settings are: {', '.join(FIELDS)}")
        return replace(self, **changes) if changes else self


FIELDS = tuple(f.name for f in fields(InferenceSettings))
# settings used per call of `Pipeline.__call__` (the others fix how the Pipeline's networks run, or are infer.py's
# inputs, which the Python API takes as arguments)
CALL_FIELDS = ("controls", "layout", "sync_fix", "paste_back", "watermark", "dub_appearance", "aligned", "landmarks",
               "landmark_weights", "progress")
PIPELINE_FIELDS = ("device", "batch_size", "precision", "seed", "noise_mode")


def _one_of(key: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PipelineError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")


def _integer(key: str, value, minimum: int | None = None) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise PipelineError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})") from None
    if minimum is not None and v < minimum:
        raise PipelineError(f"{key}: expected an integer >= {minimum}, got {v}")
    return int(v)


def _parse_aligned(value) -> str:
    if isinstance(value, str):
        value = {"true": True, "yes": True, "false": False, "no": False}.get(value.lower(), value)
    if value is True or (type(value) is int and value == 1):
        return "true"
    if value is False or (type(value) is int and value == 0):
        return "false"
    if value is None or value == "auto":
        return "auto"
    raise PipelineError(f"aligned: expected true, false or auto, got {value!r}")


def _check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError("precision=fp16 needs a CUDA device (CPU convolutions have no fast float16 path); on "
                            "CPU use precision=bf16 (fast on CPUs with AVX512-BF16 or AMX) or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PipelineError(f"precision=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use "
                            "precision=fp16 or fp32")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (AVX512-BF16 or AMX, as oneDNN reports it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False
