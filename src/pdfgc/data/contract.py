"""The batch contract between the stage datasets and the training stages (docs/ARCHITECTURE.md).

Each stage dataset declares its contract (`CONTRACT`, pdfgc.data.stage_datasets): each required key maps to its
shape template; symbols: B = batch, S = image size, N = number of offsets (lip), K = window length (emo). Images are
float32 RGB CHW in [-1, 1]; mel windows are float32 (1, 80, 20) in [0, 1]. Every batch may also carry `identity`
(B,) int64 and `gt_*` tensors whose leading axis is B (ground-truth factors of the frames involved; NaN = unknown).
Stages ignore keys they do not use.

`validate_batch(dataset, batch, image_size)` checks a (collated) batch against `dataset.CONTRACT` and raises
`BatchContractError` naming the sample kind, the key, the expected and the actual value.
"""
from __future__ import annotations

from typing import Mapping

from pdfgc.constants import MEL_WINDOW, N_MELS
from pdfgc.errors import UserError

IMAGE = ("B", 3, "S", "S")          # one image per batch row
MEL = (1, N_MELS, MEL_WINDOW)        # one mel window (trailing dims)

# keys whose values are images (checked for the [-1, 1] range) and mel windows (checked for [0, 1])
_IMAGE_KEYS = {"app", "drv", "drv_aug", "frames", "anchor", "positive", "negative"}
_MEL_KEYS = {"mel"}
# keys whose values may hold NaN (= unknown ground truth); every other float key must be finite
_NAN_OK = {"eye_open", "gaze", "pose"}


class BatchContractError(UserError, ValueError):
    """A batch does not match the contract of its stage."""


def _contract(dataset) -> tuple[str, Mapping[str, tuple]]:
    """(name, contract) of a dataset class or instance with `CONTRACT` (and `stage`), or of a plain mapping."""
    if isinstance(dataset, Mapping):
        return "batch", dataset
    contract = getattr(dataset, "CONTRACT", None)
    if not isinstance(contract, Mapping) or not contract:
        raise BatchContractError(f"{dataset!r} declares no batch contract (a stage dataset class with CONTRACT, "
                                 "see pdfgc.data.stage_datasets)")
    return str(getattr(dataset, "stage", "") or type(dataset).__name__), contract


def expected_shapes(dataset, batch_size: int, image_size: int, num_offsets: int | None = None,
                    window: int | None = None) -> dict[str, tuple]:
    """Concrete shapes of every required key of `dataset`'s contract; symbols N/K left as None when not given."""
    _, contract = _contract(dataset)
    sym = {"B": batch_size, "S": image_size, "N": num_offsets, "K": window}
    return {k: tuple(sym[d] if isinstance(d, str) else d for d in tmpl) for k, tmpl in contract.items()}


def validate_batch(dataset, batch: Mapping, image_size: int, num_offsets: int | None = None,
                   window: int | None = None, check_values: bool = True) -> int:
    """Check a collated batch against the contract of `dataset` (a stage dataset class or instance, e.g.
    `STAGES["lip"].DATASET`, or a contract mapping); returns the batch size B.

    Args:
        dataset: declares `CONTRACT` (key -> shape template) and `stage` (its name in messages).
        batch: mapping of key -> torch.Tensor (or numpy array) as produced by a DataLoader.
        image_size: S, the model's image size in pixels.
        num_offsets, window: expected N (lip) / K (emo); None accepts any value consistent across keys.
        check_values: also check dtypes and value ranges (images in [-1, 1], mel in [0, 1], no NaN in images).
    Raises:
        BatchContractError naming the stage, key, expected and actual shape/dtype/range.
    """
    import torch

    stage, contract = _contract(dataset)
    if not isinstance(batch, Mapping):
        raise BatchContractError(f"stage '{stage}': batch must be a dict of tensors, got {type(batch).__name__}")
    missing = [k for k in contract if k not in batch]
    if missing:
        raise BatchContractError(f"stage '{stage}': batch lacks key(s) {missing}; has {sorted(batch)}. "
                                 f"Required: {list(contract)} (docs/ARCHITECTURE.md, batch contract)")
    sym: dict[str, int | None] = {"B": None, "S": int(image_size), "N": num_offsets, "K": window}
    for key, tmpl in contract.items():
        value = batch[key]
        shape = tuple(value.shape)
        if len(shape) != len(tmpl):
            raise BatchContractError(f"stage '{stage}', key '{key}': expected {len(tmpl)} dims {_fmt(tmpl)}, "
                                     f"got shape {shape}")
        for dim, (want, got) in enumerate(zip(tmpl, shape)):
            if isinstance(want, str):
                if sym[want] is None:
                    sym[want] = got
                want_v = sym[want]
            else:
                want_v = want
            if got != want_v:
                what = {"B": "batch size", "S": "image size", "N": "num_offsets", "K": "window"}.get(want, "size")
                raise BatchContractError(f"stage '{stage}', key '{key}': dim {dim} ({what}) expected {want_v} "
                                         f"({_fmt(tmpl)}), got shape {shape}")
        if check_values:
            t = torch.as_tensor(value)
            if not t.is_floating_point():
                raise BatchContractError(f"stage '{stage}', key '{key}': expected a float32 tensor, got {t.dtype}")
            if t.dtype != torch.float32:
                raise BatchContractError(f"stage '{stage}', key '{key}': expected float32, got {t.dtype}")
            if key in _IMAGE_KEYS or key in _MEL_KEYS:
                if not torch.isfinite(t).all():
                    raise BatchContractError(f"stage '{stage}', key '{key}': holds NaN/inf values")
                lo, hi = (-1.0, 1.0) if key in _IMAGE_KEYS else (0.0, 1.0)
                mn, mx = float(t.min()), float(t.max())
                if mn < lo - 1e-4 or mx > hi + 1e-4:
                    raise BatchContractError(f"stage '{stage}', key '{key}': values must lie in [{lo}, {hi}], "
                                             f"got [{mn:.4g}, {mx:.4g}]")
            elif key not in _NAN_OK and not torch.isfinite(t).all():
                raise BatchContractError(f"stage '{stage}', key '{key}': holds NaN/inf values")
    b = sym["B"]
    for key, value in batch.items():
        if key == "identity" or key.startswith("gt_"):
            shape = tuple(getattr(value, "shape", ()))
            if not shape or shape[0] != b:
                raise BatchContractError(f"stage '{stage}', key '{key}': leading axis must be the batch size {b}, "
                                         f"got shape {shape}")
            if key == "identity" and check_values and torch.as_tensor(value).dtype != torch.int64:
                raise BatchContractError(f"stage '{stage}', key 'identity': expected int64, got "
                                         f"{torch.as_tensor(value).dtype}")
    return int(b)


def _fmt(tmpl: tuple) -> str:
    return "(" + ", ".join(str(d) for d in tmpl) + ")"
