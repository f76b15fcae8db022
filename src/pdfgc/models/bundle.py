"""PDFGCModels: the four inference networks in one nn.Module, built from a model config (configs/model/*.yaml)
or loaded from the released checkpoints / a pdfgc export (see `pdfgc.models.checkpoint`)."""
from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path
from typing import Any, Mapping, Union

from torch import nn

INFERENCE_COMPONENTS = ("appearance", "motion", "audio", "generator")
ConfigLike = Union[str, Path, Mapping[str, Any]]


CONFIG_DIR_ENV = "PDFGC_MODEL_CONFIG_DIR"
PACKAGED_CONFIG_DIR = "_model_configs"  # where a wheel may carry a copy of configs/model (see docs/models.md)


def config_dir() -> Path:
    """The folder holding the model configs (`<name>.yaml`), first that exists of:

    1. `$PDFGC_MODEL_CONFIG_DIR` (explicit override; must exist);
    2. the repository's `configs/model` (source checkout / editable install: the single source of truth);
    3. `pdfgc/_model_configs` inside the installed package (a non-editable install whose build maps
       configs/model there as package data, see docs/models.md).
    When none exists, the repository path is returned (error messages then name it).
    """
    env = os.environ.get(CONFIG_DIR_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{CONFIG_DIR_ENV}={env!r} is not a folder; point it at a copy of the "
                                    "repository's configs/model (pdfgc.yaml, tiny.yaml) or unset it")
        return path
    repo = Path(__file__).resolve().parents[3] / "configs" / "model"
    if repo.is_dir():
        return repo
    packaged = Path(__file__).resolve().parents[1] / PACKAGED_CONFIG_DIR
    if packaged.is_dir():
        return packaged
    return repo


def load_model_config(config: ConfigLike = "pdfgc") -> dict:
    """Resolve a model config to a plain dict with interpolations resolved.

    config: a name ("pdfgc", "tiny" -> configs/model/<name>.yaml), a path to a yaml/json file, or a mapping
    (e.g. the Hydra `cfg.model` node or a dict read from JSON).
    """
    if isinstance(config, Mapping) or type(config).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            return OmegaConf.to_container(config, resolve=True)
        return copy.deepcopy(dict(config))
    path = Path(config)
    if not path.suffix:
        path = config_dir() / f"{config}.yaml"
    if not path.is_file():
        avail = sorted(p.stem for p in config_dir().glob("*.yaml")) if config_dir().is_dir() else []
        raise FileNotFoundError(f"model config {str(config)!r}: file {path} not found; available names: {avail} "
                                f"(or pass a path to a yaml/json file, or a dict; set {CONFIG_DIR_ENV} to a copy "
                                "of the repository's configs/model when pdfgc is installed without it)")
    if path.suffix == ".json":
        import json

        return json.loads(path.read_text())
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def component_class(target: str) -> type:
    """Import 'package.module.Class'."""
    mod, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model config: cannot import _target_ {target!r} ({e})") from e


def build_component(cfg: Mapping[str, Any]) -> nn.Module:
    """Instantiate one component from its config entry {"_target_": "pkg.mod.Class", **constructor kwargs}."""
    if "_target_" not in cfg:
        raise ValueError(f"model config entry has no `_target_`: keys {sorted(cfg)}")
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    return component_class(cfg["_target_"])(**kwargs)


def component_config(module: nn.Module) -> dict:
    """The config entry that rebuilds `module`: {"_target_": ..., **module.config}."""
    if not hasattr(module, "config"):
        raise TypeError(f"{type(module).__name__} has no `.config` (constructor kwargs); cannot export it")
    cls = type(module)
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **copy.deepcopy(module.config)}


class PDFGCModels(nn.Module):
    """Appearance, motion, audio encoders and the generator (the four released networks).

    Checks at construction that the parts fit: style_dim == app_dim + lip + emo + eye + pose of the encoders,
    and the appearance spatial code matches the generator's start size and channels.
    """

    def __init__(self, appearance: nn.Module, motion: nn.Module, audio: nn.Module, generator: nn.Module):
        super().__init__()
        self.appearance = appearance
        self.motion = motion
        self.audio = audio
        self.generator = generator
        a, m, g = appearance.config, motion.config, generator.config
        expected_style = appearance.app_dim + audio.config["lip_dim"] + m["emo_dim"] + m["eye_dim"] + m["pose_dim"]
        if g["style_dim"] != expected_style:
            raise ValueError(f"PDFGCModels: generator.style_dim={g['style_dim']} but app_dim {appearance.app_dim} + "
                             f"lip {audio.config['lip_dim']} + emo {m['emo_dim']} + eye {m['eye_dim']} + pose "
                             f"{m['pose_dim']} = {expected_style}; fix the model config")
        if audio.config["lip_dim"] != m["lip_dim"]:
            raise ValueError(f"PDFGCModels: audio lip_dim {audio.config['lip_dim']} != motion lip_dim {m['lip_dim']}")
        if (a["spatial_dim"], a["spatial_size"]) != (generator.spatial_channels, generator.start_size):
            raise ValueError(f"PDFGCModels: appearance f_sp is {a['spatial_dim']}x{a['spatial_size']}^2 but the "
                             f"generator starts at {generator.spatial_channels}x{generator.start_size}^2")
        self.load_report: dict = {}

    @property
    def image_size(self) -> int:
        return self.generator.image_size

    @property
    def code_dims(self) -> dict[str, int]:
        """Widths of the style parts in assembly order: {"app", "lip", "emo", "eye", "pose"} (2048, 500, 30, 6, 6
        for the released model); their sum is the generator's style_dim."""
        m = self.motion.code_dims
        return {"app": self.appearance.app_dim, "lip": m["lip"], "emo": m["emo"], "eye": m["eye"], "pose": m["pose"]}

    def config_dict(self) -> dict:
        """Model config (same layout as configs/model/*.yaml) that rebuilds these four networks."""
        cfg = {"image_size": self.image_size}
        for name in INFERENCE_COMPONENTS:
            cfg[name] = component_config(getattr(self, name))
        return cfg

    @classmethod
    def from_config(cls, config: ConfigLike = "pdfgc") -> "PDFGCModels":
        """Build randomly initialised networks from a model config (name, path or dict; extra entries such as
        generator0/discriminator are ignored)."""
        cfg = load_model_config(config)
        missing = [k for k in INFERENCE_COMPONENTS if k not in cfg]
        if missing:
            raise ValueError(f"model config lacks {missing}; expected entries {INFERENCE_COMPONENTS}")
        return cls(**{k: build_component(cfg[k]) for k in INFERENCE_COMPONENTS})

    @classmethod
    def from_official(cls, path, config: ConfigLike | None = None, **kwargs) -> "PDFGCModels":
        """Load the four released .pth files (see `pdfgc.models.checkpoint.load_official`)."""
        from .checkpoint import load_official

        return load_official(path, config=config, **kwargs)

    def save_official(self, path) -> Path:
        """Write the four state_dicts in the released format (see `pdfgc.models.checkpoint.save_official`)."""
        from .checkpoint import save_official

        return save_official(self, path)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "PDFGCModels":
        """Load a pdfgc export or, detected automatically, an official checkpoint folder."""
        from .checkpoint import load_any

        return load_any(path, **kwargs)

    def save_pretrained(self, path) -> Path:
        """Write the pdfgc export format (a folder per component: config.json + model.safetensors)."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, path)
