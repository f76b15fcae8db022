"""Typed stage settings: the parts every stage shares (dataclasses; each default is written here or in the stage's
own `Config`, nowhere else).

A stage's settings are one dataclass (e.g. `pdfgc.stages.lip.LipConfig`) registered as a Hydra structured config
(`<name>_schema` in the `stage` group, by `pdfgc.stages.register_configs`); `configs/stage/<name>.yaml` builds on
it and names the stage class (`_target_`). So a misspelt key or a value of the wrong type fails when the config is
composed, with the key named, and `python train.py stage=lip --cfg job` prints every setting with its value.
Value ranges (a negative learning rate or loss weight, zero iterations) are checked by `validate`, which
`pdfgc.train` runs on every stage config before anything is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from pdfgc.errors import UserError


class StageConfigError(UserError, ValueError):
    """A stage setting is out of range or names something that does not exist."""


class GanLoss(str, Enum):
    hinge = "hinge"          # the reference (SPEC 4.2)
    logistic = "logistic"    # StyleGAN2 non-saturating


class Similarity(str, Enum):
    cosine = "cosine"      # CLIP-style
    inv_l2 = "inv_l2"      # 1/L2 of normalised features (the reference's leaked trainer)


class RegressionKind(str, Enum):
    l1 = "l1"
    smooth_l1 = "smooth_l1"
    mse = "mse"


class NoiseMode(str, Enum):
    random = "random"        # fresh generator noise every call
    const = "const"          # the generator's stored noise buffers
    none = "none"            # no noise


@dataclass
class AdamConfig:
    lr: float = 1e-4                                               # reference: 1e-4 for every network
    betas: List[float] = field(default_factory=lambda: [0.0, 0.99])  # reference: (0, 0.99)
    weight_decay: float = 0.0
    # {component: factor}: that component's parameters train at lr x factor (e.g. {generator0: 5}; equalised-lr
    # generator weights are N(0, 1) while the encoders' are ~1/sqrt(fan_in), so one lr moves them at very
    # different relative rates; docs/training.md, experiment log). On the command line a new key takes `+`:
    # `+stage.optim.g.lr_mul.generator0=5`
    lr_mul: Dict[str, float] = field(default_factory=dict)


@dataclass
class StepLRConfig:
    step_size: int = 80_000   # iterations (reference: 80k)
    gamma: float = 0.93


@dataclass
class OptimConfig:
    g: AdamConfig = field(default_factory=AdamConfig)   # everything the stage trains except the discriminator
    clip_grad: Optional[float] = 5.0                    # global L2 norm per optimizer (reference 5.0); null = off
    scheduler: Optional[StepLRConfig] = None            # e.g. {step_size: 80000, gamma: 0.93}, in iterations


@dataclass
class GanOptimConfig(OptimConfig):
    d: AdamConfig = field(default_factory=AdamConfig)   # the discriminator


@dataclass
class GanConfig:
    loss: GanLoss = GanLoss.hinge
    r1_gamma: float = 0.0                 # > 0 enables lazy R1 on real images
    r1_interval: int = 16
    fm_first_layer_weight: float = 1.0    # feature matching: weight of D's first layer (reference lambda_image)


@dataclass
class EmaConfig:
    half_life_kimg: float = 10.0          # images (thousands) for the average to forget half; batch-size independent
    rampup: Optional[float] = 0.05        # half-life capped at rampup x images seen (null = off)


@dataclass
class PerceptualConfig:
    weights_path: Optional[str] = None    # torchvision vgg19-dcbb9e9d.pth; null = random VGG + one warning
    layer_weights: List[float] = field(default_factory=lambda: [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0])
    resize: Optional[int] = None


@dataclass
class LogConfig:
    sample_every: int = 500               # iterations between sample grids (0 = never)
    num_samples: int = 4


@dataclass
class CheckpointConfig:
    every: int = 500                      # iterations between periodic checkpoints (last.ckpt refreshed as well)


@dataclass
class StageConfig:
    """Settings every stage has. `trainable` overrides the stage's declaration per component:
    {component: all | [roles or children] | []} (components not named keep the declaration)."""

    _target_: str = MISSING               # the stage class (configs/stage/<name>.yaml names it)
    name: str = MISSING
    iterations: int = 1000                # iterations (G + D steps in GAN stages)
    batch_size: int = 8                   # per process
    init_from: Optional[str] = None       # a previous stage's checkpoint (component by component)
    trainable: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # batches over which the running statistics of every BatchNorm layer the stage trains are re-estimated after its
    # last iteration, with the final weights ("precise BN"; 0 = off). The running averages lag weights that move
    # fast, and frozen later stages read these statistics (docs/training.md, experiment log (e)).
    precise_bn: int = 0


@dataclass
class GANStageConfig(StageConfig):
    noise_mode: NoiseMode = NoiseMode.random   # generator noise while training
    optim: GanOptimConfig = field(default_factory=GanOptimConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)


def validate(config: StageConfig, where: str = "stage") -> StageConfig:
    """Range checks of the shared settings (types were checked when the config was composed); every loss weight
    must be >= 0. Raises StageConfigError naming the key."""
    def bad(key: str, value, want: str):
        raise StageConfigError(f"{where}.{key}={value!r}: expected {want}")

    if config.iterations < 1:
        bad("iterations", config.iterations, "an integer >= 1")
    if config.batch_size < 1:
        bad("batch_size", config.batch_size, "an integer >= 1")
    for opt_name in ("g", "d"):
        opt = getattr(config.optim, opt_name, None)
        if opt is None:
            continue
        if not opt.lr > 0:
            bad(f"optim.{opt_name}.lr", opt.lr, "a learning rate > 0")
        if len(opt.betas) != 2 or not all(0.0 <= b < 1.0 for b in opt.betas):
            bad(f"optim.{opt_name}.betas", list(opt.betas), "two values in [0, 1)")
        if opt.weight_decay < 0:
            bad(f"optim.{opt_name}.weight_decay", opt.weight_decay, "a value >= 0")
        for comp, mul in (opt.lr_mul or {}).items():
            if not float(mul) > 0:
                bad(f"optim.{opt_name}.lr_mul.{comp}", mul, "a multiplier > 0")
    if config.optim.clip_grad is not None and not config.optim.clip_grad > 0:
        bad("optim.clip_grad", config.optim.clip_grad, "a norm > 0 or null")
    if config.log.sample_every < 0:
        bad("log.sample_every", config.log.sample_every, "an integer >= 0 (0 = never)")
    if config.precise_bn < 0:
        bad("precise_bn", config.precise_bn, "an integer >= 0 (0 = off)")
    if config.checkpoint.every < 0:
        bad("checkpoint.every", config.checkpoint.every, "an integer >= 0")
    loss = getattr(config, "loss", None)
    weights = getattr(loss, "weights", None)
    if weights is not None:
        for f in dataclasses.fields(weights):
            w = getattr(weights, f.name)
            if w < 0:
                bad(f"loss.weights.{f.name}", w, "a weight >= 0 (0 disables the term)")
    gan = getattr(config, "gan", None)
    if gan is not None:
        if gan.r1_gamma < 0:
            bad("gan.r1_gamma", gan.r1_gamma, "a value >= 0")
        if gan.r1_interval < 1:
            bad("gan.r1_interval", gan.r1_interval, "an integer >= 1")
    ema = getattr(config, "ema", None)
    if ema is not None and ema.half_life_kimg < 0:
        bad("ema.half_life_kimg", ema.half_life_kimg, "a value >= 0")
    return config


def plain(config) -> dict:
    """The settings as plain Python values (enums as their names): what checkpoints and loggers store."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True, enum_to_str=True)
