"""PDFGCModels: the four inference networks in one nn.Module, built from a model config (configs/model/*.yaml,
`pdfgc.models.config`) or loaded from the released checkpoints / a pdfgc export (file formats: `pdfgc.models.checkpoint`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .checkpoint import (EXPORT_FORMAT, EXPORT_INDEX, EXPORT_VERSION, OFFICIAL_CONFIG_FILE, OFFICIAL_FILES,
                         WHERE_TO_GET, CheckpointError, CheckpointNotFoundError, _atomic_write, detect_format,
                         load_component,
                         match_state_dict, official_file, read_state_dict, save_component)
from .config import (INFERENCE_COMPONENTS, ConfigLike, ModelConfigError, build_component, component_config,
                     load_model_config, read_config_json)

log = logging.getLogger(__name__)

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
            raise ModelConfigError(f"PDFGCModels: generator.style_dim={g['style_dim']} but app_dim "
                                   f"{appearance.app_dim} + lip {audio.config['lip_dim']} + emo {m['emo_dim']} + eye "
                                   f"{m['eye_dim']} + pose {m['pose_dim']} = {expected_style}; fix the model config")
        if audio.config["lip_dim"] != m["lip_dim"]:
            raise ModelConfigError(f"PDFGCModels: audio lip_dim {audio.config['lip_dim']} != motion lip_dim "
                                   f"{m['lip_dim']}; fix the model config")
        if (a["spatial_dim"], a["spatial_size"]) != (generator.spatial_channels, generator.start_size):
            raise ModelConfigError(f"PDFGCModels: appearance f_sp is {a['spatial_dim']}x{a['spatial_size']}^2 but "
                                   f"the generator starts at {generator.spatial_channels}x{generator.start_size}^2")
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
        source = str(config) if isinstance(config, (str, Path)) else "model config"
        cfg = load_model_config(config)
        missing = [k for k in INFERENCE_COMPONENTS if k not in cfg]
        if missing:
            raise ModelConfigError(f"{source} lacks {missing}; expected entries {INFERENCE_COMPONENTS}")
        return cls(**{k: build_component(cfg[k], source=f"{source} [{k}]") for k in INFERENCE_COMPONENTS})

    @classmethod
    def from_official(cls, path, config: ConfigLike | None = None, **kwargs) -> "PDFGCModels":
        """Load the four released .pth files (see `pdfgc.models.checkpoint.load_official`)."""
        return load_official(path, config=config, **kwargs)

    def save_official(self, path) -> Path:
        """Write the four state_dicts in the released format (see `pdfgc.models.checkpoint.save_official`)."""
        return save_official(self, path)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "PDFGCModels":
        """Load a pdfgc export or, detected automatically, an official checkpoint folder."""
        return load_any(path, **kwargs)

    def save_pretrained(self, path) -> Path:
        """Write the pdfgc export format (a folder per component: config.json + model.safetensors)."""
        return save_pretrained(self, path)


# --------------------------------------------------------------------------------------------- folders of four networks
def load_official(path, config: ConfigLike | None = None, load_identity_head: bool = False,
                  device: str | torch.device = "cpu") -> PDFGCModels:
    """Load a folder with the four released .pth files into PDFGCModels (eval mode).

    config: model config (name/path/dict); None = the folder's `pdfgc_model_config.json` if present, else "pdfgc".
    load_identity_head: also load the appearance `fc.*` identity head (the reference leaves it random).
    The returned models carry `load_report` = {component: {"file": str, "ignored": [keys]}}.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"checkpoint folder {folder} does not exist: {WHERE_TO_GET}")
    files = {c: official_file(folder, c) for c in INFERENCE_COMPONENTS}  # fail before any heavy work
    if config is None:
        side = folder / OFFICIAL_CONFIG_FILE
        config = side if side.is_file() else "pdfgc"  # a file from the folder: read through the allow-list
    models = PDFGCModels.from_config(config)
    report = {}
    for comp in INFERENCE_COMPONENTS:
        module = getattr(models, comp)
        sd = read_state_dict(files[comp])
        to_load, ignored = match_state_dict(comp, module, sd, files[comp], load_identity_head)
        module.load_state_dict(to_load, strict=False)
        if ignored:
            log.info("%s: ignored %d key(s) as the reference loader does: %s%s", files[comp], len(ignored),
                     ignored[:6], " ..." if len(ignored) > 6 else "")
        report[comp] = {"file": str(files[comp]), "ignored": ignored}
    models.load_report = report
    return models.to(device).eval()


def save_official(models: PDFGCModels, path) -> Path:
    """Write `models` as the four official .pth files (plain state_dicts, reference key names) plus
    `pdfgc_model_config.json` (ignored by the reference; lets `load_official` rebuild non-default architectures).
    Writes are atomic per file. Returns the folder."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for comp in INFERENCE_COMPONENTS:
        sd = {k: v.detach().cpu().contiguous() for k, v in getattr(models, comp).state_dict().items()}
        _atomic_write(folder / OFFICIAL_FILES[comp], lambda tmp, sd=sd: torch.save(sd, tmp))
    cfg = json.dumps(models.config_dict(), indent=2)
    _atomic_write(folder / OFFICIAL_CONFIG_FILE, lambda tmp: Path(tmp).write_text(cfg))
    return folder


def _randomize_(module: nn.Module, gen: torch.Generator) -> None:
    """Give zero/one-initialised parameters and BN statistics random values so that round-trip tests can
    detect a key that was not loaded (a freshly built twin has different values everywhere)."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith((".kernel",)):
                continue  # fixed FIR taps (part of the architecture)
            else:
                t.add_(0.1 * torch.randn(t.shape, generator=gen))


def make_random_official(path, config: ConfigLike = "tiny", seed: int = 0) -> Path:
    """Create a checkpoint folder in the released format with random weights of the architecture `config`
    ("tiny" for fast tests, "pdfgc" for the full-size shapes). Deterministic in `seed`; does not touch the
    global RNG. Returns the folder; load it with `PDFGCModels.from_official(path)`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = PDFGCModels.from_config(config)
    gen = torch.Generator().manual_seed(seed + 1)
    for comp in INFERENCE_COMPONENTS:
        _randomize_(getattr(models, comp), gen)
    return save_official(models, path)


def save_pretrained(models: PDFGCModels, path, extra: Optional[Mapping[str, nn.Module]] = None) -> Path:
    """Write the pdfgc export: `model_index.json` and a folder per component (appearance, motion, audio,
    generator, plus any `extra` modules such as generator0 or discriminator). Returns the folder."""
    folder = Path(path)
    comps = {c: getattr(models, c) for c in INFERENCE_COMPONENTS}
    comps.update(extra or {})
    for name, module in comps.items():
        save_component(module, folder / name)
    index = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
             "components": {n: component_config(m)["_target_"] for n, m in comps.items()}}
    _atomic_write(folder / EXPORT_INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
    return folder


def load_pretrained(path, device: str | torch.device = "cpu") -> PDFGCModels:
    """Load the four inference networks of a pdfgc export (see `save_pretrained`)."""
    folder = Path(path)
    idx = folder / EXPORT_INDEX
    if not idx.is_file():
        raise CheckpointNotFoundError(f"pdfgc export: {idx} not found; {folder} is not a pdfgc export "
                                      "(written by PDFGCModels.save_pretrained / python -m pdfgc.models.convert)")
    index = read_config_json(idx, error=CheckpointError)
    if not isinstance(index, dict):
        raise CheckpointError(f"pdfgc export: {idx} holds a JSON {type(index).__name__}, expected an object "
                              "{\"format\", \"version\", \"components\"}; re-export the folder")
    version = index.get("version", 0)
    if (index.get("format") != EXPORT_FORMAT or not isinstance(version, int) or isinstance(version, bool)
            or version > EXPORT_VERSION):
        raise CheckpointError(f"pdfgc export: {idx} has format {index.get('format')!r} version "
                              f"{index.get('version')!r}; this pdfgc reads format {EXPORT_FORMAT!r} <= "
                              f"{EXPORT_VERSION}")
    models = PDFGCModels(**{c: load_component(folder / c) for c in INFERENCE_COMPONENTS})
    return models.to(device).eval()


def load_any(path, device: str | torch.device = "cpu", **kwargs: Any) -> PDFGCModels:
    """Load a pdfgc export or an official folder, whichever `path` is."""
    if detect_format(path) == "pdfgc":
        return load_pretrained(path, device=device)
    return load_official(path, device=device, **kwargs)


def convert_official(src, dst, config: ConfigLike | None = None) -> Path:
    """Convert a released checkpoint folder to the pdfgc export format (every tensor of the files that the model
    has, the appearance identity head included). Returns dst."""
    return save_pretrained(load_official(src, config=config, load_identity_head=True), dst)
