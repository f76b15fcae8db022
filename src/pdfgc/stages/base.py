"""Shared machinery of every training stage: `StageModule` (one optimiser, e.g. lip/pose/eye) and `GANStage`
(generator + discriminator, e.g. motion/emo).

What lives here, written once:
  * networks built from the (resolved) model config through Hydra (`_target_` + kwargs), held in `self.nets`;
  * the trainable/frozen declaration by component and role (`TRAINABLE`; encoders expose roles such as "trunk" or
    "lip" through `role_modules`, so no stage names an encoder's private submodules): frozen parts get
    `requires_grad=False` and stay in eval mode even when Lightning calls `.train()`;
  * `init_from(components)`: start from a previous stage's networks, component by component (the components come
    from `pdfgc.train.checkpoint`, which owns the file format; stages never read files);
  * manual optimisation with our own `iteration` counter. Lightning's `global_step` counts optimizer steps: one per
    iteration for `StageModule`; for `GANStage` two (G then D) plus one per lazy-R1 iteration
    (`optimizer_steps()` gives the exact number; tests pin it);
  * a private RNG stream for the training step (dropout, noise injection): data loading and prefetching cannot shift
    it, and it is part of the training state, so a resumed run draws exactly the numbers the uninterrupted run drew;
  * gradient clipping, optional StepLR, EMA generator (`pdfgc.stages.ema`), loss logging, sample media.

A stage subclass declares `STAGE` (its registry name), `Config` (its typed settings, pdfgc.stages.config),
`DATASET` (the stage dataset whose batches it trains on, pdfgc.data.stage_datasets), `COMPONENTS`, `TRAINABLE`, and
implements `compute_losses` (and for GANs `generate`). Defining such a subclass registers it (`STAGES`). Loss
weights are the typed `config.loss.weights`; a weight of 0 skips the term's computation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Mapping

import torch
from torch import nn

try:  # the package ships `pytorch_lightning`; `lightning` is accepted as well
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover
    import lightning.pytorch as pl

from pdfgc.losses.pyramid import laplacian_l1
from pdfgc.losses.regional import region_l1
from pdfgc.models.config import resolve_model_config
from pdfgc.models.layers import EqualLinear
from pdfgc.stages.config import GANStageConfig, StageConfig, StageConfigError, plain
from pdfgc.stages.ema import EMA

log = logging.getLogger(__name__)

# name -> stage class; filled by StageModule.__init_subclass__ (see pdfgc.stages.STAGES)
REGISTRY: dict[str, type["StageModule"]] = {}


def instantiate_component(model_cfg: Mapping, name: str) -> nn.Module:
    """Build network `name` ("appearance", "motion", "audio", "generator", "generator0", "discriminator") from a
    resolved model config (a `_target_` + constructor kwargs per component, configs/model/*.yaml) with Hydra."""
    from hydra.utils import instantiate

    if name not in model_cfg:
        raise StageConfigError(f"model config has no component '{name}' (has {sorted(k for k in model_cfg)}); "
                               f"see configs/model/tiny.yaml for the expected layout")
    return instantiate(dict(model_cfg[name]), _convert_="all")


def copy_overlapping(target: nn.Module, source_sd: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Initialise `target` from a state_dict of a related architecture: equal shapes are copied; tensors with the
    same rank whose shapes differ get their leading overlapping block copied (e.g. the f_app columns of a
    modulation weight (C, app+512) -> (C, app+542): the leading columns are f_app in both layouts); the rest keep
    their init. Returns {"copied": [...], "partial": [...], "skipped": [...]} key lists.

    Equalised-lr linear layers (`EqualLinear`: effective weight = weight * lr_mul / sqrt(in_dim)) whose input width
    differs get their copied block multiplied by sqrt(in_dst / in_src), so that the copied columns keep the
    *effective* weight of the source: without it the f_app columns of G0 (in 128+64) lose 46 % of their influence
    when copied into G (in 128+542), and the emo stage starts from a generator that no longer renders stage 1's
    faces."""
    report: dict[str, list[str]] = {"copied": [], "partial": [], "skipped": []}
    own = target.state_dict()
    modules = dict(target.named_modules())
    with torch.no_grad():
        for key, dst in own.items():
            src = source_sd.get(key)
            if src is None or src.ndim != dst.ndim:
                report["skipped"].append(key)
                continue
            if src.shape == dst.shape:
                dst.copy_(src)
                report["copied"].append(key)
            else:
                region = tuple(slice(0, min(a, b)) for a, b in zip(src.shape, dst.shape))
                block = src[region]
                owner = modules.get(key.rsplit(".", 1)[0] if "." in key else "")
                if (key.endswith("weight") and dst.ndim == 2 and src.shape[1] != dst.shape[1]
                        and isinstance(owner, EqualLinear)):
                    block = block * math.sqrt(dst.shape[1] / src.shape[1])
                dst[region].copy_(block)
                report["partial"].append(key)
    return report


def role_modules(net: nn.Module, role: str) -> list[nn.Module]:
    """The sub-modules of `net` that make up `role` ("all" = the whole network; other roles need a network that
    exposes them through `role_modules`, e.g. MotionEncoder's "trunk", "lip", "pose", "eye", "emo")."""
    if role == "all":
        return [net]
    if not hasattr(net, "role_modules"):
        raise StageConfigError(f"{type(net).__name__} has no roles; a stage can train all of it or none "
                               f"(got role {role!r})")
    try:
        return net.role_modules(role)
    except KeyError as e:
        raise StageConfigError(str(e.args[0]) if e.args else str(e)) from e


class StageModule(pl.LightningModule):
    """Base of every stage (manual optimisation, one optimiser over the trainable parameters).

    Args:
        config: the stage's typed settings (an instance of `self.Config`).
        model: the model config (`cfg.model`, plain dict): `_target_` + kwargs per component; derived sizes are
            filled in here (`pdfgc.models.config.resolve_model_config`).
        seed: seed of the module's private RNG stream (offset by the process rank under DDP).
    """

    STAGE: str = ""
    Config: type[StageConfig] = StageConfig
    DATASET: type | None = None
    COMPONENTS: tuple[str, ...] = ()
    # component -> "all" or a tuple of roles trainable; absent = frozen
    TRAINABLE: Mapping[str, str | tuple[str, ...]] = {}
    # `n -> iterator of n collated training batches`, a fixed seeded draw (`PDFGCDataModule.calibration_batches`),
    # set by `pdfgc.train.run` before fitting, for a stage's own set-up fits (emo: `g0_transfer.batches`)
    draw_batches = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.STAGE:
            other = REGISTRY.get(cls.STAGE)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"stage name {cls.STAGE!r} is taken by {other.__module__}.{other.__qualname__}")
            REGISTRY[cls.STAGE] = cls

    def __init__(self, config: StageConfig, model: Mapping, seed: int = 0):
        super().__init__()
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} takes a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.model_cfg = resolve_model_config(model)
        self.save_hyperparameters({"stage_config": plain(config), "model_config": self.model_cfg, "seed": int(seed)})
        self.automatic_optimization = False
        self.batch_size = int(config.batch_size)
        self.seed = int(seed)
        loss = getattr(config, "loss", None)
        self.weights = ({f.name: float(getattr(loss.weights, f.name)) for f in dataclasses.fields(loss.weights)}
                        if loss is not None else {})
        self.trainable_spec = self._trainable_spec(config.trainable)
        self.nets = nn.ModuleDict({name: instantiate_component(self.model_cfg, name) for name in self.COMPONENTS})
        self.carried: dict[str, dict[str, torch.Tensor]] = {}
        self.init_report: dict[str, str] = {}
        self.iteration = 0
        self.images_seen = 0
        self._rng_cpu: torch.Tensor | None = None
        self._rng_cuda: torch.Tensor | None = None
        self._apply_trainable()

    # ------------------------------------------------------------------ configuration helpers
    def on(self, term: str) -> bool:
        """Whether loss term `term` has a non-zero weight (terms with weight 0 are not even computed)."""
        return self.weights.get(term, 0.0) != 0.0

    @property
    def noise_mode(self) -> str:
        return self.config.noise_mode.value

    # ------------------------------------------------------------------ freezing (by component and role)
    def _trainable_spec(self, override) -> dict[str, tuple[str, ...]]:
        """component -> trainable roles ("all" = everything); `override` ({component: all | [roles] | []}) replaces
        the class declaration for the components it names."""
        spec: dict[str, tuple[str, ...]] = {}
        for comp, roles in {**self.TRAINABLE, **dict(override or {})}.items():
            if comp not in self.COMPONENTS:
                raise StageConfigError(f"stage.trainable: stage '{self.STAGE}' has no component {comp!r} (it builds "
                                       f"{list(self.COMPONENTS)})")
            if roles in ("all", None):
                spec[comp] = ("all",)
            elif isinstance(roles, str):
                spec[comp] = (roles,)
            else:
                spec[comp] = tuple(str(r) for r in roles)
        return spec

    def trainable_modules(self) -> list[nn.Module]:
        mods = []
        for comp, roles in self.trainable_spec.items():
            for role in roles:
                mods.extend(role_modules(self.nets[comp], role))
        return mods

    def frozen_modules(self) -> list[nn.Module]:
        """Maximal sub-modules that are entirely frozen (eval mode, no gradients)."""
        out = []
        for comp, net in self.nets.items():
            roles = self.trainable_spec.get(comp, ())
            if "all" in roles:
                continue
            if not roles:
                out.append(net)
            else:
                for role in net.ROLES:
                    if role not in roles:
                        out.extend(net.role_modules(role))
        return out

    def _apply_trainable(self) -> None:
        self.nets.requires_grad_(False)
        for m in self.trainable_modules():
            m.requires_grad_(True)
        for m in self.frozen_modules():
            m.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen parts stay in eval: their BatchNorm statistics and dropout must not change.
        for m in self.frozen_modules():
            m.eval()
        return self

    # ------------------------------------------------------------------ BatchNorm statistics ("precise BN")
    def calibration_forward(self, batch) -> None:
        """One forward pass through the layers the stage trains, as its training step runs them (no gradients);
        used to re-estimate BatchNorm statistics. Default: the stage's loss terms."""
        self.compute_losses(batch)

    @torch.no_grad()
    def recalibrate_batchnorm(self, batches) -> int:
        """Re-estimate the running mean / variance of every BatchNorm layer in the trainable parts as the plain
        average over `batches` (dicts of tensors) with the current weights, instead of the exponential average
        the training steps left (which lags weights that move fast). Layers the calibration forward does not
        reach keep their statistics. Deterministic (its own RNG seed; the training RNG stream is untouched).
        Returns the number of layers re-estimated."""
        from torch.nn.modules.batchnorm import _BatchNorm

        seen, bns = set(), []
        for mod in self.trainable_modules():
            for m in mod.modules():
                if isinstance(m, _BatchNorm) and m.track_running_stats and id(m) not in seen:
                    seen.add(id(m))
                    bns.append(m)
        if not bns:
            return 0
        saved = [({k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        was_training = self.training
        self.train()  # frozen parts stay in eval (see train())
        try:
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                for batch in batches:
                    batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    self.calibration_forward(batch)
        finally:
            self.train(was_training)
            for m, (state, momentum) in zip(bns, saved):
                m.momentum = momentum
                if int(m.num_batches_tracked) == 0:  # not reached by the calibration forward
                    m.load_state_dict(state)
        return sum(int(m.num_batches_tracked) > 0 for m in bns)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of everything except the discriminator (deduplicated, stable order)."""
        seen, params = set(), []
        disc = self.nets["discriminator"] if "discriminator" in self.nets else None
        for m in self.trainable_modules():
            if m is disc:
                continue
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    # ------------------------------------------------------------------ init_from / carry
    def init_from(self, components: Mapping[str, Mapping[str, torch.Tensor]], source: str = "checkpoint"
                  ) -> dict[str, str]:
        """Start from a previous stage's networks (`components`: name -> state_dict, as
        `pdfgc.train.checkpoint.TrainingCheckpoint.components` gives them; `source` names them in messages).

        For each component this stage builds: take the same name (its EMA first); else, for `generator`, the
        stage-1 `generator0` (its EMA if present) with `copy_overlapping`. Components this stage does not build are
        kept and written into this stage's checkpoints (carried forward). Returns {component: how it was
        initialised}."""
        report = {}
        for name, net in self.nets.items():
            src = self._init_source(name, components)
            if src is None:
                report[name] = "fresh init (not in checkpoint)"
                continue
            src_name, sd = src
            if src_name in (name, f"{name}_ema"):
                missing, unexpected = net.load_state_dict(sd, strict=False)
                if missing or unexpected:
                    raise StageConfigError(f"{source}: component '{src_name}' does not fit this stage's '{name}' "
                                           f"(missing {list(missing)[:4]}, unexpected {list(unexpected)[:4]}); "
                                           f"was it trained with the same model config?")
                report[name] = f"loaded from '{src_name}'"
            else:
                r = copy_overlapping(net, sd)
                report[name] = (f"initialised from '{src_name}' ({len(r['copied'])} tensors copied, "
                                f"{len(r['partial'])} partially, {len(r['skipped'])} kept)")
        self.carried = {k: v for k, v in components.items() if k not in self.nets and not k.endswith("_ema")}
        # The EMA of a generator this stage does not train is carried too (export needs it).
        for k, v in components.items():
            if k.endswith("_ema") and k[: -len("_ema")] not in self.nets:
                self.carried[k] = v
        for name, how in report.items():
            log.info("init_from %s: %s %s", source, name, how)
        self.init_report = report
        return report

    def _init_source(self, name: str, comps: Mapping) -> tuple[str, Mapping] | None:
        # Prefer the EMA weights of a generator: they are the ones the previous stage would export.
        for cand in (f"{name}_ema", name):
            if cand in comps:
                return cand, comps[cand]
        if name == "generator":
            for cand in ("generator0_ema", "generator0"):
                if cand in comps:
                    return cand, comps[cand]
        return None

    # ------------------------------------------------------------------ training state (saved by pdfgc.train)
    def training_state(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the state_dict and optimizers to resume exactly (written by
        `pdfgc.train.checkpoint`): iteration, images seen, the private RNG stream, carried components."""
        if self._rng_cpu is None:
            self._init_rng()
        return {"stage": self.STAGE, "iteration": self.iteration, "images_seen": self.images_seen,
                "rng_cpu": self._rng_cpu.clone(),
                "rng_cuda": None if self._rng_cuda is None else self._rng_cuda.clone(),
                "carried": self.carried, "ema_of": getattr(self, "GENERATOR", None) if self.has_ema else None,
                "model": self.model_cfg}

    def load_training_state(self, state: Mapping[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.images_seen = int(state["images_seen"])
        self._rng_cpu = state["rng_cpu"]
        self._rng_cuda = state.get("rng_cuda")
        self.carried = dict(state.get("carried") or {})

    has_ema = False

    # ------------------------------------------------------------------ RNG stream of the training step
    def _init_rng(self) -> None:
        g = torch.Generator().manual_seed(self.seed * 1000003 + int(getattr(self, "global_rank", 0)))
        self._rng_cpu = g.get_state()
        if torch.cuda.is_available() and self.device.type == "cuda":
            with torch.random.fork_rng(devices=[self.device]):
                torch.cuda.manual_seed(self.seed * 1000003 + 7 + int(self.global_rank))
                self._rng_cuda = torch.cuda.get_rng_state(self.device)

    @contextlib.contextmanager
    def model_rng(self):
        """Run the body on the module's private RNG stream (CPU and current CUDA device) and advance it."""
        if self._rng_cpu is None:
            self._init_rng()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._rng_cpu)
            if devices and self._rng_cuda is not None:
                torch.cuda.set_rng_state(self._rng_cuda, self.device)
            yield
            self._rng_cpu = torch.get_rng_state()
            if devices:
                self._rng_cuda = torch.cuda.get_rng_state(self.device)

    # ------------------------------------------------------------------ optimisation
    def _adam(self, params, opt_cfg, lr_scale: float = 1.0, beta_power: float = 1.0):
        """Adam over `params` with `opt_cfg`'s lr / betas / weight decay; `opt_cfg.lr_mul` ({component: factor})
        puts each named component's parameters in its own group at lr x factor (the first group is always the
        unscaled one, which is what the `lr/<optimizer>` log shows)."""
        b1, b2 = (float(b) for b in opt_cfg.betas)
        lr = float(opt_cfg.lr) * lr_scale
        return torch.optim.Adam(self._lr_groups(params, opt_cfg.lr_mul, lr), lr=lr,
                                betas=(b1 ** beta_power, b2 ** beta_power), weight_decay=float(opt_cfg.weight_decay),
                                foreach=True)

    def _lr_groups(self, params, lr_mul, lr: float) -> list[dict]:
        """Split `params` into Adam parameter groups by component: one group at `lr` for every parameter whose
        component has no multiplier, then one per component of `lr_mul` at lr x multiplier (empty groups dropped)."""
        lr_mul = dict(lr_mul or {})
        owner = {}
        for comp in lr_mul:
            for p in self.nets[comp].parameters():
                owner[id(p)] = comp
        base = [p for p in params if id(p) not in owner]
        groups = [{"params": base, "lr": lr}]
        for comp, mul in lr_mul.items():
            mine = [p for p in params if owner.get(id(p)) == comp]
            if mine:
                groups.append({"params": mine, "lr": lr * float(mul), "component": comp})
        return [g for g in groups if g["params"]] or [{"params": [], "lr": lr}]

    def _scheduler(self, opt):
        sch = self.config.optim.scheduler
        if not sch:
            return None
        # StepLR counted in iterations (the reference default: step 80k, gamma 0.93); stepped manually.
        return torch.optim.lr_scheduler.StepLR(opt, step_size=int(sch.step_size), gamma=float(sch.gamma))

    def _generator_side_parameters(self) -> list[nn.Parameter]:
        params = self.generator_parameters()
        if not params:
            raise StageConfigError(f"stage '{self.STAGE}': nothing to train outside the discriminator (trainable: "
                                   f"{self.trainable_spec}); check stage.trainable")
        return params

    def configure_optimizers(self):
        opt = self._adam(self._generator_side_parameters(), self.config.optim.g)
        sch = self._scheduler(opt)
        return ([opt], [sch]) if sch else opt

    def optimizer_steps(self, iterations: int | None = None) -> int:
        """Lightning optimizer steps (= trainer.global_step) after `iterations` (default: the configured number)."""
        return int(self.config.iterations if iterations is None else iterations)

    def _step(self, opt, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip = self.config.optim.clip_grad
        if clip:
            self.clip_gradients(opt, gradient_clip_val=float(clip), gradient_clip_algorithm="norm")
        opt.step()

    def _schedulers(self) -> list:
        s = self.lr_schedulers()
        if s is None:
            return []
        return s if isinstance(s, list) else [s]

    # ------------------------------------------------------------------ the training step
    def compute_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unweighted loss terms of the enabled (non-zero weight) terms, by name. Implemented by each stage."""
        raise NotImplementedError

    def weighted_total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for k, v in terms.items():
            w = self.weights.get(k, 0.0)
            if w:
                total = v * w if total is None else total + v * w
        if total is None:
            raise StageConfigError(f"stage '{self.STAGE}': every loss weight is 0 ({self.weights}); nothing to "
                                   "train")
        return total

    def iteration_step(self, batch) -> dict[str, torch.Tensor]:
        opt = self.optimizers()
        terms = self.compute_losses(batch)
        total = self.weighted_total(terms)
        self._step(opt, total)
        return {**terms, "total": total.detach()}

    def batch_images(self, batch) -> int:
        return self.batch_size * max(1, int(getattr(self.trainer, "world_size", 1) or 1))

    def training_step(self, batch, batch_idx):
        with self.model_rng():
            logs = self.iteration_step(batch)
        for sch in self._schedulers():
            sch.step()
        self.iteration += 1
        self.images_seen += self.batch_images(batch)
        self._log_step(logs)
        self._maybe_log_media(batch)
        return None

    def _log_step(self, logs: Mapping[str, torch.Tensor]) -> None:
        values = {f"loss/{k}": v.detach().float() for k, v in logs.items() if torch.is_tensor(v)}
        values["iteration"] = float(self.iteration)
        for i, opt in enumerate(self._optimizers_list()):
            values[f"lr/{self._optimizer_names()[i]}"] = float(opt.param_groups[0]["lr"])
        self.log_dict(values, on_step=True, on_epoch=False, prog_bar=False, batch_size=self.batch_size,
                      sync_dist=False)
        if "total" in logs:
            self.log("total", logs["total"].detach().float(), prog_bar=True, on_step=True, on_epoch=False,
                     batch_size=self.batch_size)

    def _optimizers_list(self) -> list:
        o = self.optimizers()
        return o if isinstance(o, list) else [o]

    def _optimizer_names(self) -> list[str]:
        return ["g"]

    # ------------------------------------------------------------------ media
    def sample_media(self, batch) -> dict[str, Any]:
        """Images (3,H,W) in [-1,1] and videos (T,3,H,W) to log, by name. Stages without images return {}."""
        return {}

    def _maybe_log_media(self, batch) -> None:
        every = int(self.config.log.sample_every or 0)
        if every <= 0 or self.trainer is None or self.global_rank != 0:
            return
        if self.iteration % every != 0 and self.iteration != int(self.config.iterations):
            return
        from pdfgc.stages.media import log_media

        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), self.model_rng():
                media = self.sample_media(batch)
        finally:
            self.train(was_training)
        if media:
            log_media(self.loggers, media, self.iteration, stage=self.STAGE)


class GANStage(StageModule):
    """A stage with a generator `GENERATOR` (a component name), the `discriminator`, an EMA of the generator and
    G/D manual optimisation. Per iteration:

      1. `generate(batch)` runs G ONCE -> dict with `fake` (B,3,S,S) and `real` (B,3,S,S) (+ anything the losses
         need);
      2. D(real) once (its features, detached, are the feature-matching targets; its graph is reused by the D loss);
      3. G step: D frozen, D(fake) with graph into G; adversarial + feature matching + stage terms;
      4. D step on the same fake, detached (G is not re-run): hinge or logistic loss;
      5. every `gan.r1_interval` iterations, if `gan.r1_gamma > 0`: a separate lazy-R1 D step with
         `gamma/2 * interval * R1` and D's lr/betas rescaled by c = interval/(interval+1) (StyleGAN2);
      6. EMA update of the generator (half-life in kimg, batch-size independent).
    """

    Config: type[GANStageConfig] = GANStageConfig
    GENERATOR = "generator"
    has_ema = True

    def __init__(self, config: GANStageConfig, model: Mapping, seed: int = 0):
        super().__init__(config, model, seed)
        self.ema = EMA(self.nets[self.GENERATOR], half_life_kimg=float(config.ema.half_life_kimg),
                       rampup=config.ema.rampup)
        from pdfgc.stages.common import PerceptualHolder

        self.perceptual = PerceptualHolder(config.loss.perceptual)

    def init_from(self, components, source: str = "checkpoint") -> dict[str, str]:
        report = super().init_from(components, source)
        # A stage that starts from a trained generator starts its average there too.
        self.ema.shadow.load_state_dict(self.nets[self.GENERATOR].state_dict())
        return report

    @property
    def generator(self) -> nn.Module:
        return self.nets[self.GENERATOR]

    @property
    def discriminator(self) -> nn.Module:
        return self.nets["discriminator"]

    def optimizer_steps(self, iterations: int | None = None) -> int:
        n = int(self.config.iterations if iterations is None else iterations)
        gan = self.config.gan
        r1_steps = math.ceil(n / gan.r1_interval) if gan.r1_gamma > 0 else 0  # iterations 0, interval, 2*interval..
        return 2 * n + r1_steps

    def configure_optimizers(self):
        g_opt = self._adam(self._generator_side_parameters(), self.config.optim.g)
        gan = self.config.gan
        c = gan.r1_interval / (gan.r1_interval + 1) if gan.r1_gamma > 0 else 1.0
        d_opt = self._adam([p for p in self.discriminator.parameters() if p.requires_grad], self.config.optim.d,
                           lr_scale=c, beta_power=c)
        opts = [g_opt, d_opt]
        schs = [s for s in (self._scheduler(g_opt), self._scheduler(d_opt)) if s is not None]
        return (opts, schs) if schs else opts

    def _optimizer_names(self) -> list[str]:
        return ["g", "d"]

    def generate(self, batch) -> dict[str, torch.Tensor]:
        """Run the generator once: returns at least {'fake': (B,3,S,S), 'real': (B,3,S,S)}."""
        raise NotImplementedError

    def compute_losses(self, batch, out: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Stage-specific generator terms (not gan/fm), given `out = generate(batch)`."""
        raise NotImplementedError

    def calibration_forward(self, batch) -> None:
        self.compute_losses(batch, self.generate(batch))

    def reconstruction_terms(self, fake: torch.Tensor, real: torch.Tensor,
                             boxes: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The pixel terms every GAN stage shares, each computed only when its weight is on: `l1` (mean absolute
        error), `lap` (Laplacian-pyramid L1, `losses.pyramid`), `vgg` (perceptual distance of VGG features), and `l1_eye` / `l1_mouth` (L1 inside the eye / mouth
        box of each target, `losses.regional.region_l1`; `boxes` = {"eye": (B,4), "mouth": (B,4)}, terms whose box
        the batch lacks are skipped); fake, real (B,3,S,S) in [-1,1]."""
        terms = {}
        if self.on("l1"):
            terms["l1"] = torch.nn.functional.l1_loss(fake, real)
        if self.on("lap"):
            terms["lap"] = laplacian_l1(fake, real)
        if self.on("vgg"):
            terms["vgg"] = self.perceptual(fake, real)
        for region in ("eye", "mouth"):
            if self.on(f"l1_{region}") and boxes is not None and boxes.get(region) is not None:
                terms[f"l1_{region}"] = region_l1(fake, real, boxes[region])
        return terms

    def iteration_step(self, batch) -> dict[str, torch.Tensor]:
        from pdfgc.losses.gan import d_loss, feature_matching_loss, g_loss, r1_penalty

        g_opt, d_opt = self.optimizers()
        gan = self.config.gan
        kind = gan.loss.value
        out = self.generate(batch)
        fake, real = out["fake"], out["real"]
        need_d_for_g = self.on("gan") or self.on("fm")
        real_out = self.discriminator(real)

        # --- G step (D's parameters do not need gradients here) ---
        self.discriminator.requires_grad_(False)
        terms = dict(self.compute_losses(batch, out))
        if need_d_for_g:
            fake_out = self.discriminator(fake)
            if self.on("gan"):
                terms["gan"] = g_loss(fake_out, kind)
            if self.on("fm"):
                terms["fm"] = feature_matching_loss(real_out, fake_out, float(gan.fm_first_layer_weight))
        self.discriminator.requires_grad_(True)
        total = self.weighted_total(terms)
        self._step(g_opt, total)

        # --- D step on the same (detached) fake ---
        logs = {**{k: v.detach() for k, v in terms.items()}, "total": total.detach()}
        ld = d_loss(real_out, self.discriminator(fake.detach()), kind)
        self._step(d_opt, ld)
        logs["d"] = ld.detach()
        if gan.r1_gamma > 0 and self.iteration % gan.r1_interval == 0:
            real_r = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.discriminator(real_r), real_r)
            self._step(d_opt, r1 * (gan.r1_gamma / 2 * gan.r1_interval))
            logs["r1"] = r1.detach()
        # --- EMA ---
        bimg = self.batch_images(batch)
        beta = self.ema.update(self.generator, bimg, self.images_seen + bimg)
        logs["ema_beta"] = torch.tensor(beta)
        return logs
