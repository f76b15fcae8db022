"""Checkpoint files, one network at a time: the released PD-FGC files (four plain state_dicts) and the pdfgc export
format. The four-network operations (load/save a folder, convert) are `PDFGCModels` methods in `pdfgc.models.bundle`.

Official folder (SPEC 2.6): `appearance_model.pth`, `motion_model.pth`, `audio_model.pth`, `generator_model.pth`.
Loading keeps the reference's intentional rules and names what it ignores:
  appearance: top-level `fc.*` (identity classifier) is not loaded (unless load_identity_head=True);
  audio:      the audio->expression branch `model.layer4_exp*`, `model.attention_exp*`, `model.fc_exp*`,
              `exp_embed*` (and any top-level `fc*`) is dropped;
  motion:     old names containing `classifier`, `mouth_fc`, `headpose_fc`, `to_feature`, `to_embed` are dropped;
              other unknown keys are ignored with a warning (the reference loads the key intersection);
  generator:  keys the model does not have are ignored.
Unlike the reference, every key of the model must be in the file with the same shape (BatchNorm
`num_batches_tracked` excepted); otherwise a CheckpointError names the file, key, expected and actual shape.
A folder written by `save_official` also holds `pdfgc_model_config.json` so that non-default architectures
(e.g. model=tiny) reload; without it the released architecture (configs/model/pdfgc.yaml) is assumed.

pdfgc export (`save_pretrained`): `model_index.json` + one folder per component with `config.json`
({"_target_": class, **constructor kwargs}) and `model.safetensors`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from pdfgc.errors import UserError
from pdfgc.fileio import atomic_path

from .config import build_component, component_config, read_config_json

log = logging.getLogger(__name__)

OFFICIAL_FILES = {
    "appearance": "appearance_model.pth",
    "motion": "motion_model.pth",
    "audio": "audio_model.pth",
    "generator": "generator_model.pth",
}
# the official README calls the motion file `motion_mode.pth` (typo); accept it as a fallback
OFFICIAL_ALIASES = {"motion": ("motion_mode.pth",)}
OFFICIAL_CONFIG_FILE = "pdfgc_model_config.json"
CHECKPOINT_URL = "https://drive.google.com/file/d/1UtFpTnRvUNGNSsr1LDU6W5nNtzacIB9J/view"
WHERE_TO_GET = (f"download checkpoints.tar from {CHECKPOINT_URL} (linked from the README of "
                "github.com/Dorniwang/PD-FGC-inference) and extract it: `tar -xf checkpoints.tar`; or create a "
                "random-weight folder for tests with pdfgc.models.bundle.make_random_official(dir, 'tiny')")
EXPORT_INDEX = "model_index.json"
EXPORT_FORMAT = "pdfgc"
EXPORT_VERSION = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file/folder is missing, unreadable or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file or folder does not exist."""


# --------------------------------------------------------------------------------------------- loader rules
def _appearance_ignored(key: str) -> bool:
    return "fc" in key and "model" not in key  # the reference's rule: the 5995-way identity head


_AUDIO_EXP_NAMES = ("model.layer4_exp", "model.attention_exp", "model.fc_exp", "exp_embed")


def _audio_ignored(key: str) -> bool:
    # substring tests, as the reference's rule (a key *containing* e.g. `exp_embed` anywhere is dropped)
    return any(n in key for n in _AUDIO_EXP_NAMES) or ("fc" in key and "model" not in key)


_MOTION_OLD_NAMES = ("classifier", "mouth_fc", "headpose_fc", "to_feature", "to_embed")


def _motion_ignored(key: str) -> bool:
    return any(n in key for n in _MOTION_OLD_NAMES)


# component -> (rule for file keys the reference drops, whether other unknown file keys are tolerated)
LOAD_RULES: dict[str, tuple[Callable[[str], bool], bool]] = {
    "appearance": (_appearance_ignored, False),
    "motion": (_motion_ignored, True),
    "audio": (_audio_ignored, False),
    "generator": (lambda k: False, True),
}


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def official_file(folder: Path, component: str) -> Path:
    """Path of a component's official file in `folder` (accepting the README's `motion_mode.pth` spelling);
    CheckpointNotFoundError with download instructions when absent."""
    folder = Path(folder)
    for name in (OFFICIAL_FILES[component],) + OFFICIAL_ALIASES.get(component, ()):
        if (folder / name).is_file():
            return folder / name
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
    where = f"folder {folder} holds {present}" if present is not None else f"folder {folder} does not exist"
    raise CheckpointNotFoundError(f"checkpoint file {folder / OFFICIAL_FILES[component]} not found ({where}). "
                                  f"The released PD-FGC checkpoints are four files {list(OFFICIAL_FILES.values())}: "
                                  f"{WHERE_TO_GET}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load(path, map_location="cpu", weights_only=True) of a plain state_dict; a {"state_dict": ...}
    wrapper and a DDP `module.` prefix are removed. CheckpointError when unreadable or not a state_dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file {path} not found: {WHERE_TO_GET}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty/truncated file, random bytes, a pickle that needs code (weights_only), ...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        size = path.stat().st_size
        raise CheckpointError(f"checkpoint file {path} is corrupt or not a PyTorch state_dict ({size} bytes; "
                              f"torch.load failed: {type(e).__name__}: {first}). "
                              f"Re-download it: {WHERE_TO_GET}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and set(obj) == {wrapper} and isinstance(obj[wrapper], Mapping):
            log.info("%s: unwrapped {%r: state_dict}", path, wrapper)
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(f"checkpoint file {path} holds a {type(obj).__name__}, expected a state_dict "
                              "(a dict of str -> tensor). Re-download it: " + WHERE_TO_GET)
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        log.info("%s: removed the DDP `module.` prefix", path)
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def dtype_fits(stored: torch.dtype, wanted: torch.dtype) -> bool:
    """Whether a stored tensor may be loaded into a model tensor: float into float (any precision), otherwise the
    same type (integer counters, boolean masks). An integer or boolean tensor for float weights is not a weight."""
    if wanted.is_floating_point:
        return stored.is_floating_point
    return stored == wanted or (not stored.is_floating_point and not stored.is_complex and stored != torch.bool
                                and wanted != torch.bool)


def match_state_dict(component: str, module: nn.Module, file_sd: Mapping[str, torch.Tensor], path: Path,
                     load_identity_head: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply the loader rules of `component` to a file's state_dict against `module`.

    Returns (state_dict to load (model keys only), sorted list of file keys that were ignored).
    Raises CheckpointError for a missing model key, a shape mismatch, or (appearance/audio) an unknown key.
    """
    rule, tolerate_unknown = LOAD_RULES[component]
    model_sd = module.state_dict()
    ignored, unknown, to_load, bad_shape = [], [], {}, []
    bad_dtype = []
    for k, v in file_sd.items():
        if k in model_sd and not (rule(k) and not (component == "appearance" and load_identity_head)):
            if tuple(v.shape) != tuple(model_sd[k].shape):
                bad_shape.append(f"{k}: expected {tuple(model_sd[k].shape)}, file has {tuple(v.shape)}")
            elif not dtype_fits(v.dtype, model_sd[k].dtype):
                bad_dtype.append(f"{k}: expected {model_sd[k].dtype}, file has {v.dtype}")
            else:
                to_load[k] = v
        elif rule(k) and not (component == "appearance" and load_identity_head and k in model_sd):
            ignored.append(k)
        else:
            unknown.append(k)
    if bad_shape:
        raise CheckpointError(f"checkpoint file {path} does not fit the {component} network ({len(bad_shape)} "
                              f"shape mismatch(es)): " + "; ".join(bad_shape[:8]) +
                              ". Is it the right file, and does the model config match the checkpoint "
                              "(model=pdfgc for the released files)?")
    if bad_dtype:
        raise CheckpointError(f"checkpoint file {path} stores {len(bad_dtype)} tensor(s) of the {component} network "
                              "in a type that would be cast silently: " + "; ".join(bad_dtype[:8]) +
                              ". The file is damaged or not a PD-FGC checkpoint; re-download it: " + WHERE_TO_GET)
    if unknown and not tolerate_unknown:
        raise CheckpointError(f"checkpoint file {path} has {len(unknown)} key(s) the {component} network does "
                              f"not have (the reference loader rejects them too): {sorted(unknown)[:8]}. Is it the "
                              "right file for this component?")
    if unknown:
        log.warning("%s: ignoring %d key(s) unknown to the %s network: %s", path, len(unknown), component,
                    sorted(unknown)[:8])
        ignored += unknown
    missing = []
    for k, v in model_sd.items():
        if k in to_load:
            continue
        if k.endswith("num_batches_tracked"):
            continue  # a BN counter; harmless when absent (older torch)
        if component == "appearance" and rule(k) and not load_identity_head:
            continue  # the identity head stays as initialised, as in the reference
        missing.append(f"{k} (expected shape {tuple(v.shape)})")
    if missing:
        raise CheckpointError(f"checkpoint file {path} lacks {len(missing)} key(s) of the {component} network: "
                              + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "") +
                              ". The file is incomplete or for a different architecture; re-download it "
                              f"({CHECKPOINT_URL}) or check the model config.")
    return to_load, sorted(ignored)


# --------------------------------------------------------------------------------------------- pdfgc export
def save_component(module: nn.Module, folder) -> Path:
    """Write one component as `folder/config.json` + `folder/model.safetensors`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    _atomic_write(folder / "model.safetensors", lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    cfg = json.dumps(component_config(module), indent=2)
    _atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(cfg))
    return folder


def load_component(folder, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a component from `config.json` and load `model.safetensors` strictly (eval mode)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for f in ("config.json", "model.safetensors"):
        if not (folder / f).is_file():
            raise CheckpointNotFoundError(f"pdfgc export: {folder / f} not found; a component folder holds "
                                          "config.json and model.safetensors (written by save_pretrained)")
    cfg = read_config_json(folder / "config.json", error=CheckpointError)
    module = build_component(cfg, source=str(folder / "config.json"))
    try:
        sd = load_file(str(folder / "model.safetensors"))
    except Exception as e:
        raise CheckpointError(f"pdfgc export: {folder / 'model.safetensors'} is corrupt ({type(e).__name__}: "
                              f"{e}); re-export it with save_pretrained") from e
    model_sd = module.state_dict()
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    bad = [f"{k}: expected {tuple(model_sd[k].shape)}, file has {tuple(sd[k].shape)}" for k in sd
           if k in model_sd and sd[k].shape != model_sd[k].shape]
    bad += [f"{k}: expected {model_sd[k].dtype}, file has {sd[k].dtype}" for k in sd
            if k in model_sd and not dtype_fits(sd[k].dtype, model_sd[k].dtype)]
    if missing or unexpected or bad:
        raise CheckpointError(f"pdfgc export {folder / 'model.safetensors'} does not match {cfg['_target_']} built "
                              f"from config.json: missing {missing[:8]}, unexpected {unexpected[:8]}, "
                              f"wrong shape or type {bad[:8]}")
    module.load_state_dict(sd, strict=True)
    return module.to(device).eval()


def detect_format(path) -> str:
    """'pdfgc' (export), 'official' (released .pth files) or CheckpointNotFoundError."""
    folder = Path(path)
    if (folder / EXPORT_INDEX).is_file():
        return "pdfgc"
    if folder.is_dir() and any((folder / n).is_file() for n in list(OFFICIAL_FILES.values()) + ["motion_mode.pth"]):
        return "official"
    present = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else None
    raise CheckpointNotFoundError(
        f"checkpoint folder {folder}: " + (f"holds neither {EXPORT_INDEX} nor the official files "
                                           f"{list(OFFICIAL_FILES.values())} (found {present})"
                                           if present is not None else "does not exist") + f". {WHERE_TO_GET}")

