"""Stage 3 (emo): expression disentanglement + final generator (SPEC 4.1).

Per sample: K consecutive frames of a clip, their mel windows, and an appearance frame. The emotion code of every
frame is averaged over the K frames (f_exp_bar: lip motion changes within 0.2-0.4 s, expression does not), the
centre frame supplies pose and eye codes (frozen heads) and is the reconstruction target, the lips come from the
(frozen) audio encoder. G(style = [f_app | lip_audio | f_exp_bar | eye | pose], f_sp) reconstructs the centre frame.
Terms: GAN + feature matching + VGG + L1 (self-reconstruction); decor = squared cross-correlation between the
per-frame emotion codes and the audio features, estimated over the batch plus FIFO memory banks; sync = the lip code
that the frozen visual lip head reads from the generated frame must match the audio lip code (lip-sync consistency).
Trainable: the motion encoder's emotion head, generator G (initialised from G0 where shapes allow), discriminator.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

import torch

from pdfgc.data.stage_datasets import EmoDataset, EmoOptions
from pdfgc.losses.consistency import lip_sync_consistency
from pdfgc.losses.decorrelation import MemoryBank, cross_correlation_loss
from pdfgc.models.latent import assemble_style
from pdfgc.stages.base import GANStage
from pdfgc.stages.config import GANStageConfig, PerceptualConfig, StageConfigError

log = logging.getLogger(__name__)


class DecorWith(str, Enum):
    audio = "audio"      # the audio feature f_aud
    lip = "lip"          # the audio lip code


class SyncKind(str, Enum):
    l1 = "l1"
    mse = "mse"
    cosine = "cosine"


@dataclass
class EmoLossWeights:
    gan: float = 1.0
    fm: float = 10.0
    vgg: float = 10.0
    l1: float = 1.0
    lap: float = 0.0
    l1_eye: float = 0.0
    l1_mouth: float = 0.0
    decor: float = 1.0      # decorrelation of the emotion code from the audio (memory banks)
    sync: float = 1.0       # lip-sync consistency of the generated frame


@dataclass
class EmoLossConfig:
    weights: EmoLossWeights = field(default_factory=EmoLossWeights)
    decor_with: DecorWith = DecorWith.audio
    bank_size: int = 1024        # rows in each memory bank
    sync_kind: SyncKind = SyncKind.cosine
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)


@dataclass
class G0TransferConfig:
    """At iteration 0, set G's emo/eye/pose columns from G0's motion columns (`EmoStage.transfer_g0_motion`); only
    acts when G is initialised from a stage-1 generator0."""

    enabled: bool = True
    ridge: float = 1.0           # ridge of the code -> unified-motion regression (standardised codes)
    sequential: bool = True      # fit eye+pose first, emotion on the residual (false: one joint fit)


@dataclass
class EmoConfig(GANStageConfig):
    name: str = "emo"
    iterations: int = 2000
    batch_size: int = 4          # windows, x dataset.window frames each
    loss: EmoLossConfig = field(default_factory=EmoLossConfig)
    g0_transfer: G0TransferConfig = field(default_factory=G0TransferConfig)
    dataset: EmoOptions = field(default_factory=EmoOptions)


def ridge_fit(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression y ~ a @ x + b on standardised columns of x: x (n,p), y (n,q) -> a (q,p), b (q,).
    `lam` is the ridge in units of standardised x (0 = least squares); the intercept is not penalised."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-4)
    z = (x - mu) / sd
    ym = y.mean(0)
    a_std = torch.linalg.solve(z.t() @ z + lam * torch.eye(z.shape[1], dtype=z.dtype), z.t() @ (y - ym))
    a = (a_std / sd[:, None]).t()
    return a, ym - a @ mu


class EmoStage(GANStage):
    STAGE = "emo"
    Config = EmoConfig
    DATASET = EmoDataset
    COMPONENTS = ("appearance", "motion", "audio", "generator", "discriminator")
    TRAINABLE = {"motion": ("emo",), "generator": "all", "discriminator": "all"}
    GENERATOR = "generator"

    def __init__(self, config: EmoConfig, model, seed: int = 0):
        super().__init__(config, model, seed)
        loss = config.loss
        if loss.bank_size < 0:
            raise StageConfigError(f"stage.loss.bank_size={loss.bank_size}: expected rows >= 0")
        emo_dim = self.nets["motion"].code_dims["emo"]
        audio = self.nets["audio"]
        aud_dim = audio.config["embed_dim"] if loss.decor_with == DecorWith.audio else audio.config["lip_dim"]
        self.bank_emo = MemoryBank(emo_dim, int(loss.bank_size))
        self.bank_aud = MemoryBank(aud_dim, int(loss.bank_size))
        self._g0_src = None

    def init_from(self, components, source: str = "checkpoint") -> dict[str, str]:
        report = super().init_from(components, source)
        self._g0_src = None
        if self.config.g0_transfer.enabled and "generator0" in str(report.get("generator", "")):
            sd = components.get("generator0_ema", components.get("generator0"))
            layers = self.generator.style_layers()
            self._g0_src = {k: v.clone() for k, v in sd.items()
                            if k.rsplit(".", 1)[0] in layers and k.endswith((".weight", ".bias"))}
        return report

    @torch.no_grad()
    def transfer_g0_motion(self, batch) -> dict[str, float]:
        """Give G's emo/eye/pose style columns what G0 did with the unified motion feature (demo recipe option
        `stage.g0_transfer`; our choice, SPEC 4.5 leaves G's initialisation open).

        Fresh columns for 42 small-valued code dims among app+542 inputs of an equalised-lr modulation layer move
        the image ~20x less than the 500 lip dims and learn about as slowly (Adam moves each effective weight by
        lr/sqrt(in) per step), so a short emo stage never learns to render pose/eye/emotion although G0 already
        renders motion. Here the unified motion of this batch's frames is regressed on their codes, f ~ A c + b
        (ridge on standardised codes, `g0_transfer.ridge`; with `sequential` eye+pose first, emotion on the
        residual), and each modulation layer gets effective columns
        W0_mot A and bias + W0_mot b: at iteration 0 G(app, codes) ~ G0(app, A codes + b). The lip columns (the
        audio drives them) keep their init. Applied to G and its EMA. Returns {"r2": fit R^2 on the batch}.
        """
        frames = batch["frames"].flatten(0, 1)
        motion = self.nets["motion"]
        modes = {m: m.training for m in motion.modules()}
        motion.eval()  # the trainable emo head's BatchNorm statistics must not move here
        enc = motion.encode(frames, heads=("pose", "eye", "emo"))
        for m, was in modes.items():
            m.training = was
        f = enc["motion"]  # (n, m0) target: the unified motion G0 was trained on
        c = torch.cat([enc["emo"], enc["eye"], enc["pose"]], 1)  # (n, 42) in the style order after lip
        lam = float(self.config.g0_transfer.ridge)
        n_emo = enc["emo"].shape[1]
        if self.config.g0_transfer.sequential:
            # eye + pose first, the emotion code only explains what they leave: G's motion goes through the
            # factor codes where they can carry it, instead of through the wide 30-d emotion code
            a_pe, b_pe = ridge_fit(c[:, n_emo:], f, lam)
            a_e, b_e = ridge_fit(c[:, :n_emo], f - (c[:, n_emo:] @ a_pe.t() + b_pe), lam)
            a, b = torch.cat([a_e, a_pe], 1), b_pe + b_e
        else:
            a, b = ridge_fit(c, f, lam)
        fm = f.mean(0)
        pred = c @ a.t() + b
        r2 = 1 - ((pred - f) ** 2).sum() / ((f - fm) ** 2).sum().clamp_min(1e-12)
        n_code = c.shape[1]
        code_dims = sum(motion.code_dims.values())  # lip + emo + eye + pose: G's style after f_app
        for g in (self.generator, self.ema.shadow):
            layers = g.style_layers()
            for key, w0 in self._g0_src.items():
                name = key.rsplit(".", 1)[0]
                if not key.endswith(".weight") or name not in layers:
                    continue
                lin, lin0_in = layers[name], w0.shape[1]
                app_dim = lin0_in - a.shape[0]  # G0's style = [f_app | unified motion]
                scale0 = lin.lr_mul / lin0_in ** 0.5
                w0_mot = w0[:, app_dim:] * scale0  # (out, m0) effective
                w = lin.weight
                if app_dim <= 0 or w.shape[1] - app_dim != code_dims:
                    raise StageConfigError(f"g0_transfer: G0 layer {key} has {lin0_in} inputs and G {w.shape[1]}, but "
                                           f"the motion trunk gives {a.shape[0]} dims and the codes {code_dims}; were "
                                           "generator0 and motion trained in one run with this model config?")
                w[:, w.shape[1] - n_code:] = (w0_mot @ a) / lin.scale
                if lin.bias is not None:
                    lin.bias += (w0_mot @ b) / lin.lr_mul
        self._g0_src = None
        return {"r2": float(r2)}

    def iteration_step(self, batch):
        if self._g0_src is not None and self.iteration == 0:
            info = self.transfer_g0_motion(batch)
            log.info("g0_transfer: emo/eye/pose columns of G set from G0 (fit R^2 %.2f)", info["r2"])
        return super().iteration_step(batch)

    def codes(self, batch):
        """All conditioning codes of a batch; frozen encoders run without a graph."""
        frames, mel = batch["frames"], batch["mel"]
        b, k = frames.shape[:2]
        c = k // 2
        with torch.no_grad():
            f_app, f_sp = self.nets["appearance"](batch["app"])
            f_aud, lip_a = self.nets["audio"](mel.flatten(0, 1))
        motion = self.nets["motion"]
        f = motion.trunk(frames.flatten(0, 1))  # frozen trunk: no graph (its params do not require grad)
        emo = motion.head("emo", f)  # (B*K, emo) trainable head
        with torch.no_grad():
            fc = f.view(b, k, -1)[:, c]
            pose = motion.head("pose", fc)
            eye = motion.head("eye", fc)
        return dict(b=b, k=k, c=c, f_app=f_app, f_sp=f_sp, f_aud=f_aud, lip_a=lip_a.view(b, k, -1), emo=emo,
                    emo_bar=emo.view(b, k, -1).mean(1), pose=pose, eye=eye)

    def generate(self, batch, generator=None):
        z = self.codes(batch)
        g = generator if generator is not None else self.generator
        style = assemble_style(z["f_app"], z["lip_a"][:, z["c"]], z["emo_bar"], z["eye"], z["pose"])
        fake = g(style, z["f_sp"], noise_mode=self.noise_mode)
        return {"fake": fake, "real": batch["frames"][:, z["c"]], **z}

    def compute_losses(self, batch, out=None):
        c = out["c"]  # the target is the window's centre frame
        boxes = {r: batch[f"gt_{r}_box"][:, c] for r in ("eye", "mouth") if f"gt_{r}_box" in batch}
        terms = self.reconstruction_terms(out["fake"], out["real"], boxes)
        if self.on("decor"):
            audio = self.config.loss.decor_with == DecorWith.audio
            other = out["f_aud"] if audio else out["lip_a"].flatten(0, 1)
            x = self.bank_emo.with_bank(out["emo"])
            y = self.bank_aud.with_bank(other.detach())
            terms["decor"] = cross_correlation_loss(x, y)
            self.bank_emo.push(out["emo"])
            self.bank_aud.push(other)
        if self.on("sync"):
            vis_lip = self.nets["motion"].encode(out["fake"], heads=("lip",))["lip"]
            terms["sync"] = lip_sync_consistency(vis_lip, out["lip_a"][:, out["c"]],
                                                 self.config.loss.sync_kind.value)
        return terms

    @torch.no_grad()
    def sample_media(self, batch):
        from pdfgc.stages.media import image_grid, swap_grid

        n = min(int(self.config.log.num_samples), batch["app"].shape[0])
        sub = {k: v[:n] for k, v in batch.items() if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] >= n}
        z = self.codes(sub)
        g = self.ema.shadow
        c = z["c"]
        lip = z["lip_a"][:, c]

        def render(f_app, f_sp, lip_, emo_, eye_, pose_):
            return g(assemble_style(f_app, lip_, emo_, eye_, pose_), f_sp, noise_mode="const")

        real = sub["frames"][:, c]
        fake = render(z["f_app"], z["f_sp"], lip, z["emo_bar"], z["eye"], z["pose"])
        media = {"recon": image_grid([sub["app"], real, fake])}
        for factor in ("emo", "pose"):
            cells = []
            for i in range(n):
                emo_ = z["emo_bar"][i:i + 1].expand(n, -1) if factor == "emo" else z["emo_bar"]
                pose_ = z["pose"][i:i + 1].expand(n, -1) if factor == "pose" else z["pose"]
                cells.append(render(z["f_app"], z["f_sp"], lip, emo_, z["eye"], pose_))
            media[f"swap_{factor}"] = swap_grid(real, sub["app"], torch.stack(cells))
        # short video of sample 0: every frame of the window rendered with its own pose/eye/lip, real | fake
        motion = self.nets["motion"]
        frames0 = sub["frames"][0]
        enc = motion.encode(frames0, heads=("pose", "eye"))
        k = frames0.shape[0]
        vid = render(z["f_app"][:1].expand(k, -1), z["f_sp"][:1].expand(k, -1, -1, -1), z["lip_a"][0],
                     z["emo_bar"][:1].expand(k, -1), enc["eye"], enc["pose"])
        media["video"] = torch.cat([frames0, vid], dim=-1)
        return media
