"""The training-checkpoint format. This module is the only one that writes or reads it: resuming (`ckpt_path`),
chaining stages (`stage.init_from`), the inference export and the stage-1 probe all go through `read`.

A training checkpoint is a Lightning checkpoint (state_dict, optimizer and scheduler states, loop counters) plus
pdfgc's entry `checkpoint["pdfgc"]`:

    format        FORMAT_VERSION
    stage         the stage that wrote it ("motion", "lip", ...)
    iteration     iterations done; images_seen: images seen by the EMA bookkeeping (all processes)
    rng_cpu/cuda  the stage's private RNG stream (dropout, generator noise), for an exact resume
    carried       {component: state_dict}: networks of earlier stages this stage does not build
    ema_of        the component whose EMA is stored in state_dict under `ema.shadow.` (None without EMA)
    model         the resolved model config the networks were built from
    run_config    the resolved run config (for the record)

The networks a stage builds are in `state_dict` under `nets.<component>.`. `components_of` gives every network of a
checkpoint by component name, the EMA generator as `<generator>_ema`. Files are read with
`torch.load(weights_only=True)`: a checkpoint can never run code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from pdfgc.errors import UserError

KEY = "pdfgc"
FORMAT_VERSION = 1
STATE_KEYS = ("stage", "iteration", "images_seen", "rng_cpu", "rng_cuda", "carried", "ema_of", "model")


class TrainingCheckpointError(UserError, ValueError):
    """A file is missing, unreadable, or not a pdfgc training checkpoint (or not of the expected stage)."""


@dataclass
class TrainingCheckpoint:
    """A training checkpoint read from `path`: its pdfgc entry (`state`) and every network (`components`)."""

    path: Path
    state: dict[str, Any]
    components: dict[str, dict[str, torch.Tensor]]

    @property
    def stage(self) -> str:
        return str(self.state["stage"])

    @property
    def iteration(self) -> int:
        return int(self.state["iteration"])

    @property
    def model_config(self) -> dict:
        return dict(self.state["model"])

    def network(self, name: str, prefer_ema: bool = True) -> tuple[str, dict[str, torch.Tensor]]:
        """(which, state_dict) of network `name`; its EMA (`<name>_ema`) first when present and `prefer_ema`."""
        for cand in ((f"{name}_ema", name) if prefer_ema else (name,)):
            if cand in self.components:
                return cand, self.components[cand]
        raise TrainingCheckpointError(f"{self.path} (stage '{self.stage}') holds no '{name}' network; it has "
                                      f"{sorted(self.components)}")


def write_state(checkpoint: dict, state: Mapping[str, Any], run_config: Mapping | None = None) -> None:
    """Put the pdfgc entry into a Lightning checkpoint dict being saved (`state` = `StageModule.training_state()`)."""
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise KeyError(f"training state lacks {missing}")
    checkpoint[KEY] = {"format": FORMAT_VERSION, **{k: state[k] for k in STATE_KEYS},
                       "run_config": dict(run_config) if run_config else None}


def read_state(checkpoint: Mapping, path: str | Path = "checkpoint", stage: str | None = None) -> dict[str, Any]:
    """The pdfgc entry of a loaded checkpoint dict, checked; with `stage`, it must have been written by that stage."""
    meta = checkpoint.get(KEY) if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping):
        raise TrainingCheckpointError(f"{path} is not a pdfgc training checkpoint (no '{KEY}' entry); pass a "
                                      "stage's checkpoints/last.ckpt")
    if int(meta.get("format", 1)) > FORMAT_VERSION:
        raise TrainingCheckpointError(f"{path}: training-checkpoint format {meta.get('format')} is newer than this "
                                      f"pdfgc reads ({FORMAT_VERSION}); update pdfgc")
    missing = [k for k in STATE_KEYS if k not in meta and k != "rng_cuda"]
    if missing:
        raise TrainingCheckpointError(f"{path}: the '{KEY}' entry lacks {missing}; the file is damaged")
    if stage is not None and meta["stage"] != stage:
        raise TrainingCheckpointError(
            f"ckpt_path={path} belongs to stage '{meta['stage']}', but this run is stage '{stage}'. To start a new "
            f"stage from it use stage.init_from=<ckpt>; ckpt_path is for resuming the same stage.")
    return dict(meta)


def components_of(checkpoint: Mapping) -> dict[str, dict[str, torch.Tensor]]:
    """Every network of a loaded checkpoint dict by component name -> state_dict: the ones its stage built
    (`nets.<name>.`), its EMA generator as `<generator>_ema`, and the carried ones."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    meta = checkpoint.get(KEY, {})
    for name, sd in (meta.get("carried") or {}).items():
        out[name] = dict(sd)
    for key, value in checkpoint.get("state_dict", {}).items():
        if key.startswith("nets."):
            comp, rest = key[len("nets."):].split(".", 1)
            out.setdefault(comp, {})[rest] = value
        elif key.startswith("ema.shadow."):
            gen = meta.get("ema_of") or "generator"
            out.setdefault(f"{gen}_ema", {})[key[len("ema.shadow."):]] = value
    return out


def load(path: str | Path) -> dict:
    """torch.load of a training checkpoint file (weights_only=True), with errors that name the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TrainingCheckpointError(f"checkpoint {p} does not exist; point it at a stage's checkpoints/last.ckpt "
                                      "(e.g. outputs/<run>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # empty or truncated file, random bytes, a pickle that would run code, ...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise TrainingCheckpointError(f"{p} is not a readable training checkpoint ({p.stat().st_size} bytes; "
                                      f"torch.load(weights_only=True) failed: {type(e).__name__}: {first}); use "
                                      "another checkpoint, e.g. a periodic iter_*.ckpt next to it") from e
    if not isinstance(ckpt, dict):
        raise TrainingCheckpointError(f"{p} holds a {type(ckpt).__name__}, not a training checkpoint")
    return ckpt


def read(path: str | Path, stage: str | None = None) -> TrainingCheckpoint:
    """Read a training checkpoint: its pdfgc entry and every network (see `components_of`)."""
    ckpt = load(path)
    state = read_state(ckpt, path, stage)
    return TrainingCheckpoint(path=Path(path), state=state, components=components_of(ckpt))
