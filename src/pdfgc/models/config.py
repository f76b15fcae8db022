"""Model configs: where they live, the sizes derived from them, and the library's one builder.

A model config (configs/model/<name>.yaml, or a dict) holds one entry per network: `_target_` (the class) plus its
constructor arguments. Sizes that follow from other entries are computed here, never typed by hand:

    appearance.spatial_dim   = the generator's channels at its start size (f_sp is the generator's input)
    appearance.spatial_size  = the generator's start size (7 for 7*2^k images, 4 for 2^k)
    generator.style_dim      = app_dim + lip + emo + eye + pose   (2048 + 500 + 30 + 6 + 6 = 2590 released)
    generator0.style_dim     = app_dim + the motion trunk's feature_dim (stage 1: [f_app | unified motion])

`resolve_model_config` fills them in (a config that states one must state the computed value). Every network is
built by `build_component`, which only accepts pdfgc's own network classes (`COMPONENT_CLASSES`): a config read from
a file someone gave you cannot name an arbitrary callable. Training builds the same classes through Hydra from the
resolved config (pdfgc.stages), so both paths see identical arguments.
"""
from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path
from typing import Any, Mapping, Union

from pdfgc.errors import UserError

INFERENCE_COMPONENTS = ("appearance", "motion", "audio", "generator")
ConfigLike = Union[str, Path, Mapping[str, Any]]

CONFIG_DIR_ENV = "PDFGC_MODEL_CONFIG_DIR"
PACKAGED_CONFIG_DIR = "_model_configs"  # where a wheel may carry a copy of configs/model (see docs/models.md)

# the only classes a model config may name (configs read from checkpoint folders and exports come from strangers)
COMPONENT_CLASSES = (
    "pdfgc.models.appearance.AppearanceEncoder",
    "pdfgc.models.motion.MotionEncoder",
    "pdfgc.models.audio.AudioEncoder",
    "pdfgc.models.generator.Generator",
    "pdfgc.models.discriminator.MultiscaleDiscriminator",
)


class ModelConfigError(UserError, ValueError):
    """A model config names a class outside pdfgc's networks, lacks an entry, or states a derived size wrongly."""


MAX_CONFIG_BYTES = 1 << 20  # a JSON config from a checkpoint folder or export is a few hundred bytes


def read_config_json(path, max_bytes: int = MAX_CONFIG_BYTES, error: type = ModelConfigError) -> Any:
    """The JSON value of a small config file (from a folder someone gave you): `error` naming the file when it is
    larger than `max_bytes`, not UTF-8 or not JSON."""
    import json

    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{path}: {size:,} bytes, more than max_bytes={max_bytes:,} for a config file "
                    "(pdfgc.models.config.MAX_CONFIG_BYTES); the file is not a pdfgc config")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({type(e).__name__}: {e}); re-create it (save_pretrained / "
                    "python -m pdfgc.models.convert)") from e


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
    """Resolve a model config to a plain dict with interpolations and derived sizes resolved.

    config: a name ("pdfgc", "tiny" -> configs/model/<name>.yaml), a path to a yaml/json file, or a mapping
    (e.g. the Hydra `cfg.model` node or a dict read from JSON).
    """
    if isinstance(config, Mapping) or type(config).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            return resolve_model_config(OmegaConf.to_container(config, resolve=True))
        return resolve_model_config(copy.deepcopy(dict(config)))
    path = Path(config)
    if not path.suffix:
        path = config_dir() / f"{config}.yaml"
    if not path.is_file():
        avail = sorted(p.stem for p in config_dir().glob("*.yaml")) if config_dir().is_dir() else []
        raise FileNotFoundError(f"model config {str(config)!r}: file {path} not found; available names: {avail} "
                                f"(or pass a path to a yaml/json file, or a dict; set {CONFIG_DIR_ENV} to a copy "
                                "of the repository's configs/model when pdfgc is installed without it)")
    if path.suffix == ".json":
        return resolve_model_config(read_config_json(path), source=str(path))
    from omegaconf import OmegaConf

    return resolve_model_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True), source=str(path))


def _set_derived(entry: dict, key: str, value: int, where: str, source: str) -> None:
    if key in entry and entry[key] is not None and int(entry[key]) != int(value):
        raise ModelConfigError(f"model config {source}: {where}.{key}={entry[key]} but it follows from the other "
                               f"entries as {value}; remove the key (it is computed)")
    entry[key] = int(value)


def resolve_model_config(cfg: Mapping[str, Any], source: str = "(dict)") -> dict:
    """A copy of `cfg` with the derived sizes (module docstring) filled in; entries other networks do not depend on
    are left as they are. Idempotent."""
    if not isinstance(cfg, Mapping):
        raise ModelConfigError(f"model config {source}: expected an object of networks ({{\"appearance\": {{...}}, "
                               f"...}}), got a {type(cfg).__name__}")
    for name, entry in cfg.items():  # refuse a foreign class before computing anything from the entries
        if isinstance(entry, Mapping) and "_target_" in entry and str(entry["_target_"]) not in COMPONENT_CLASSES:
            raise ModelConfigError(f"model config {source}: {name}._target_ {str(entry['_target_'])!r} is not one "
                                   f"of pdfgc's networks {list(COMPONENT_CLASSES)}; refusing to build it (a model "
                                   "config may only name these classes)")
    try:
        return _resolve(cfg, source)
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        # sizes computed from entries a file may hold anything in: wrong keys or types are the file's fault
        raise ModelConfigError(f"model config {source}: cannot compute the derived sizes ({type(e).__name__}: "
                               f"{e}); compare the file with configs/model/pdfgc.yaml") from e


def _resolve(cfg: Mapping[str, Any], source: str) -> dict:
    from .appearance import AppearanceEncoder
    from .generator import Generator

    out = copy.deepcopy(dict(cfg))
    for name in out:
        if isinstance(out[name], Mapping):
            out[name] = dict(out[name])
    app, mot, aud, gen = (out.get(k) for k in ("appearance", "motion", "audio", "generator"))
    base = gen or out.get("generator0")
    if app is not None and base is not None:
        s0, c0 = Generator.input_shape(**_kwargs(base))
        _set_derived(app, "spatial_dim", c0, "appearance", source)
        _set_derived(app, "spatial_size", s0, "appearance", source)
    if app is not None and mot is not None:
        app_dim = AppearanceEncoder.output_dim(**_kwargs(app))
        if gen is not None:
            lip = (aud or {}).get("lip_dim", mot.get("lip_dim"))
            codes = int(lip) + sum(int(mot[k]) for k in ("emo_dim", "eye_dim", "pose_dim"))
            _set_derived(gen, "style_dim", app_dim + codes, "generator", source)
        if out.get("generator0") is not None:
            _set_derived(out["generator0"], "style_dim", app_dim + int(mot["feature_dim"]), "generator0", source)
    return out


def _kwargs(entry: Mapping[str, Any]) -> dict:
    return {k: v for k, v in entry.items() if k != "_target_"}


def component_class(target: str, source: str = "model config") -> type:
    """The class named by `_target_` ('package.module.Class'), which must be one of `COMPONENT_CLASSES`."""
    if target not in COMPONENT_CLASSES:
        raise ModelConfigError(f"{source}: _target_ {target!r} is not one of pdfgc's networks "
                               f"{list(COMPONENT_CLASSES)}; refusing to build it (a model config may only name "
                               "these classes)")
    mod, _, name = target.rpartition(".")
    return getattr(importlib.import_module(mod), name)


MAX_COMPONENT_PARAMS = 1_000_000_000  # 4 GB of float32 per network; the released generator has 91 M


def _count_on_meta(cls: type, kwargs: Mapping[str, Any]) -> int | None:
    """Parameters + buffers of `cls(**kwargs)` built on the meta device (no memory); None when that fails."""
    import torch

    try:
        with torch.device("meta"):
            m = cls(**kwargs)
        return sum(t.numel() for t in m.parameters()) + sum(t.numel() for t in m.buffers())
    except Exception:  # the real build below reports the problem
        return None


def build_component(cfg: Mapping[str, Any], source: str = "model config",
                    max_params: int | None = MAX_COMPONENT_PARAMS) -> Any:
    """Instantiate one network from its config entry {"_target_": "pdfgc.models....Class", **constructor kwargs}.
    `source` names where the entry came from (a file path) in error messages. The network is first built on the
    meta device (no memory) and refused when it holds more than `max_params` numbers (parameters + buffers; None =
    no limit): a config from a file cannot make pdfgc allocate without bound."""
    if not isinstance(cfg, Mapping) or "_target_" not in cfg:
        keys = sorted(cfg) if isinstance(cfg, Mapping) else type(cfg).__name__
        raise ModelConfigError(f"{source}: a network entry needs `_target_` (one of {list(COMPONENT_CLASSES)}); "
                               f"got {keys}")
    cls = component_class(str(cfg["_target_"]), source)
    kwargs = _kwargs(cfg)
    if max_params is not None:
        n = _count_on_meta(cls, kwargs)
        if n is not None and n > max_params:
            raise ModelConfigError(f"{source}: {cfg['_target_']} would hold {n:,} parameters, more than the limit "
                                   f"max_params={max_params:,} (pdfgc.models.config.MAX_COMPONENT_PARAMS); the "
                                   "config is damaged or not meant for pdfgc (the released generator has 91 M)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        raise ModelConfigError(f"{source}: cannot build {cfg['_target_']}: {type(e).__name__}: {e}") from e


def component_config(module) -> dict:
    """The config entry that rebuilds `module`: {"_target_": ..., **module.config}."""
    if not hasattr(module, "config"):
        raise TypeError(f"{type(module).__name__} has no `.config` (constructor kwargs); cannot export it")
    cls = type(module)
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **copy.deepcopy(module.config)}
