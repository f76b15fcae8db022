"""The command line of inference: `python infer.py key=value ...` (see docs/inference.md).

    main(argv)                 -> compose_settings(argv) -> run_inference(settings); user errors: one line, exit 2
    compose_settings(argv)     configs/infer.yaml, which builds on the structured config `infer_schema`
                               (= `InferenceSettings`), plus Hydra overrides -> checked `InferenceSettings`
    run_inference(settings)    load the checkpoint, run the Pipeline, write the mp4

Hydra and OmegaConf are imported here only, and only when a function needs them (`import pdfgc.pipeline` stays
light). The config is composed with Hydra's compose API rather than `@hydra.main`: inference is one job (no sweeps,
no output folder, no log files), and composition errors (an unknown key, a wrong type) must be one line with exit
status 2 like every other user error, which `@hydra.main` does not allow.
"""
from __future__ import annotations

import difflib
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from pdfgc.errors import report_user_errors
from pdfgc.pipeline.errors import PipelineError
from pdfgc.pipeline.settings import FIELDS, InferenceSettings

log = logging.getLogger(__name__)

SCHEMA_NAME = "infer_schema"  # the first entry of configs/infer.yaml's defaults list
REQUIRED = ("ckpt", "audio", "source")
EXAMPLE = ("python infer.py ckpt=CHECKPOINT_DIR audio=speech.wav source=photo.jpg pose=video.mp4 exp=... eye=... "
           "controls=[all] out=result.mp4")
_KINDS = {"int": "an integer", "bool": "true or false", "str": "a string", "Optional[str]": "a path (or null)"}


def register_schema() -> None:
    """Register `InferenceSettings` in Hydra's ConfigStore as `infer_schema` (typed keys, no others)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.structured(InferenceSettings)
    OmegaConf.set_readonly(node, False)  # a frozen dataclass gives a read-only node; overrides must merge into it
    ConfigStore.instance().store(name=SCHEMA_NAME, node=node)


def _hint() -> str:
    return "settings: " + ", ".join(FIELDS) + " (python infer.py --help; docs/inference.md)"


def _unknown_key(key: str) -> PipelineError:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    maybe = f"did you mean {close[0]}? " if close else ""
    return PipelineError(f"unknown setting {key!r}; {maybe}{_hint()}")


def _composition_error(e: Exception, overrides: Sequence[str]) -> PipelineError:
    """One line for a Hydra/OmegaConf composition error: the override, the key, what it expects."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = e.__cause__ if e.__cause__ is not None else e
    key = str(getattr(cause, "full_key", None) or "")
    text = [ln.strip() for ln in str(cause).splitlines() if ln.strip()
            and not ln.strip().startswith(("full_key:", "object_type=", "reference_type="))]
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        return _unknown_key(key.split(".")[0])
    if key in FIELDS:
        given = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), key)
        kind = _KINDS.get(str(next(f.type for f in fields(InferenceSettings) if f.name == key)), "another value")
        return PipelineError(f"{given}: {key} expects {kind} ({'; '.join(text)})")
    return PipelineError(f"{'; '.join(text)} [{' '.join(overrides)}]")


def compose_settings(overrides: Sequence[str] = (), *, config_dir, config_name: str = "infer",
                     return_config: bool = False):
    """Compose `config_dir/<config_name>.yaml` with `key=value` overrides (Hydra's override grammar) and build the
    checked `InferenceSettings`. An unknown key, a wrong type or a bad value raises `PipelineError` (one line);
    nothing heavy (no checkpoint, no media) is touched. `return_config` also returns the composed DictConfig."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_schema()
    overrides = list(overrides)
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
            cfg = compose(config_name=config_name, overrides=overrides)
        values = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise _composition_error(e, overrides) from e
    extra = sorted(set(values) - set(FIELDS))  # `+key=value` adds a key even to a typed config
    if extra:
        raise _unknown_key(extra[0])
    settings = InferenceSettings(**values)
    return (settings, cfg) if return_config else settings


def run_inference(settings: InferenceSettings) -> Path:
    """Run inference as `python infer.py` does and write the mp4; returns its path.

    Everything that can be checked before the checkpoint is loaded is checked first (required inputs, the output
    folder, the input files; `settings` itself was checked when it was built). Raises a `UserError` subclass for
    bad input (PipelineError, CheckpointError, MediaError, ...).
    """
    from pdfgc.pipeline import inputs
    from pdfgc.pipeline.core import Pipeline

    if not isinstance(settings, InferenceSettings):
        raise TypeError(f"run_inference: expected InferenceSettings (compose_settings), got {type(settings).__name__}")
    missing = [k for k in REQUIRED if getattr(settings, k) in (None, "")]
    if missing:
        raise PipelineError(f"missing required setting(s): {', '.join(missing)}; e.g. {EXAMPLE}")
    out = inputs.check_output_path(settings.out)
    for key in ("audio", "source", "pose", "exp", "eye"):
        v = getattr(settings, key)
        if v not in (None, "") and not Path(v).exists():
            raise PipelineError(f"{key}: {v} does not exist")

    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(settings.ckpt, settings)
    t_load = time.perf_counter() - t0
    s = settings
    res = pipe(s.source, s.audio, pose=s.pose or None, exp=s.exp or None, eye=s.eye or None, out=out)
    total = time.perf_counter() - t0
    gen = res.timings.get("total", 0.0)
    fps = res.num_frames / gen if gen > 0 else float("nan")
    h, w = (res.frame_shape or (res.panel if s.layout == "panel" else res.frames).shape[1:])[:2]
    what = " pasted back" if res.pasted else ""
    label = "" if s.watermark else ", NOT labelled as synthetic (watermark=false)"
    print(f"pdfgc: wrote {out} | {res.num_frames} frames ({res.num_frames / res.fps:.2f} s at {res.fps:g} fps), "
          f"{w}x{h}{what}{label}, controls={','.join(res.controls) or 'none'} | "
          f"networks {gen:.1f} s = {fps:.2f} frames/s on {pipe.device} ({s.precision}), load {t_load:.1f} s, "
          f"total {total:.1f} s",
          flush=True)
    return out


def _print_help(config_dir) -> None:
    from omegaconf import OmegaConf

    _, cfg = compose_settings([], config_dir=config_dir, return_config=True)
    print(f"usage: {EXAMPLE}\n\nPD-FGC inference. Settings (key=value, Hydra override syntax) and their defaults; "
          "docs/inference.md explains each:\n")
    print(OmegaConf.to_yaml(cfg).rstrip())
    print("\n--cfg prints the composed settings of a command line; --help prints this.")


def main(argv: Sequence[str] | None = None, *, config_dir) -> None:
    """`python infer.py [--help] [--cfg] key=value ...`: a user error prints one line
    (`pdfgc infer: error: ...`) and exits with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with report_user_errors("infer"):
        if "-h" in argv or "--help" in argv:
            _print_help(config_dir)
            return
        show = "--cfg" in argv
        argv = [a for a in argv if a != "--cfg"]
        flags = [a for a in argv if a.startswith("-")]
        if flags:
            raise PipelineError(f"unknown option {flags[0]}; settings are key=value, e.g. {EXAMPLE}")
        settings, cfg = compose_settings(argv, config_dir=config_dir, return_config=True)
        if show:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg).rstrip())
            return
        # console logging as before (one line per message, stdout): the pipeline reports inputs and drivers
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        run_inference(settings)
