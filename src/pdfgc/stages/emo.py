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

from pdfgc.constants import EMO_SCALE, EYE_SCALE, LIP_SCALE
from pdfgc.data.stage_datasets import EmoDataset, EmoOptions
from pdfgc.losses.consistency import lip_sync_consistency
from pdfgc.losses.decorrelation import MemoryBank, cross_correlation_loss
from pdfgc.models.latent import assemble_style
from pdfgc.pipeline.controls import gaussian_kernel, smooth_lip, smooth_pose
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
    lip: bool = False            # also G's lip columns from the audio lip code (sequential: after eye+pose)
    batches: int = 1             # batches the fit sees: the first training batch + fixed calibration draws


@dataclass
class EmoConfig(GANStageConfig):
    name: str = "emo"
    iterations: int = 2000
    batch_size: int = 4          # windows, x dataset.window frames each
    # feed G the codes as inference does (SPEC 1.6): lip x1.5 after the 3-tap Gaussian over time, eye and emotion
    # x1.2, pose averaged over 3 frames. false: raw codes, which inference then exaggerates (training log (m))
    inference_codes: bool = True
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
        W0_mot A and bias + W0_mot b: at iteration 0 G(app, codes) ~ G0(app, A codes + b). With `g0_transfer.lip`
        the audio lip code joins the fit (after eye+pose when sequential) and the lip columns get W0_mot A_lip;
        otherwise they keep their init. The fit sees `g0_transfer.batches` batches (this one, then fixed
        calibration draws: 500 lip dims need more frames than one batch holds). Applied to G and its EMA. Returns
        {"r2": fit R^2 over those frames}.
        """
        cfg = self.config.g0_transfer
        batches = [batch]
        if int(cfg.batches) > 1 and self.draw_batches is not None:
            batches += list(self.draw_batches(int(cfg.batches) - 1))
        motion = self.nets["motion"]
        modes = {m: m.training for m in motion.modules()}
        motion.eval()  # the trainable emo head's BatchNorm statistics must not move here
        encs = [motion.encode(bt["frames"].flatten(0, 1), heads=("pose", "eye", "emo")) for bt in batches]
        enc = {k: torch.cat([e[k] for e in encs]) for k in encs[0]}
        for m, was in modes.items():
            m.training = was
        f = enc["motion"]  # (n, m0) target: the unified motion G0 was trained on
        s_lip, s_eye, s_emo = self._scales()  # the codes as G receives them
        c = torch.cat([enc["emo"] * s_emo, enc["eye"] * s_eye, enc["pose"]], 1)  # (n, 42) in the style order
        lam = float(cfg.ridge)
        n_emo = enc["emo"].shape[1]
        lip = None
        if cfg.lip:  # every frame's audio lip code (unsmoothed: smoothing needs neighbours outside the window)
            lip = torch.cat([self.nets["audio"](bt["mel"].flatten(0, 1))[1] for bt in batches]) * s_lip
        if cfg.sequential:
            # eye + pose first, (the lip code next,) the emotion code only explains what they leave: G's motion goes
            # through the factor codes where they can carry it, instead of through the wide 30-d emotion code
            a_pe, b_pe = ridge_fit(c[:, n_emo:], f, lam)
            r = f - (c[:, n_emo:] @ a_pe.t() + b_pe)
            if lip is not None:
                a_l, b_l = ridge_fit(lip, r, lam)
                r = r - (lip @ a_l.t() + b_l)
                b_pe = b_pe + b_l
            a_e, b_e = ridge_fit(c[:, :n_emo], r, lam)
            a, b = torch.cat([a_e, a_pe], 1), b_pe + b_e
        else:
            if lip is not None:
                a_all, b = ridge_fit(torch.cat([lip, c], 1), f, lam)
                a_l, a = a_all[:, :lip.shape[1]], a_all[:, lip.shape[1]:]
            else:
                a, b = ridge_fit(c, f, lam)
        fm = f.mean(0)
        pred = c @ a.t() + b
        if lip is not None:
            pred = pred + lip @ a_l.t()
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
                if lip is not None:  # the lip columns sit just before the emo/eye/pose ones
                    n_lip = lip.shape[1]
                    w[:, w.shape[1] - n_code - n_lip:w.shape[1] - n_code] = (w0_mot @ a_l) / lin.scale
                if lin.bias is not None:
                    lin.bias += (w0_mot @ b) / lin.lr_mul
        self._g0_src = None
        return {"r2": float(r2)}

    def iteration_step(self, batch):
        if self._g0_src is not None and self.iteration == 0:
            info = self.transfer_g0_motion(batch)
            log.info("g0_transfer: emo/eye/pose columns of G set from G0 (fit R^2 %.2f)", info["r2"])
        return super().iteration_step(batch)

    def _scales(self) -> tuple[float, float, float]:
        """(lip, eye, emotion) factors on the codes G sees: inference's with `inference_codes`, else 1."""
        return (LIP_SCALE, EYE_SCALE, EMO_SCALE) if self.config.inference_codes else (1.0, 1.0, 1.0)

    def codes(self, batch):
        """All conditioning codes of a batch; frozen encoders run without a graph. Raw codes (`lip_a` (B,K,lip),
        `emo` per frame, `emo_bar`, `eye`, `pose` of the centre frame) for the losses, and `g_lip`, `g_emo`,
        `g_eye`, `g_pose`: the centre frame's codes as G receives them (`inference_codes`: what `Pipeline` feeds G
        for that frame of a video, SPEC 1.6, with the emotion averaged over the window)."""
        frames, mel = batch["frames"], batch["mel"]
        b, k = frames.shape[:2]
        c = k // 2
        with torch.no_grad():
            f_app, f_sp = self.nets["appearance"](batch["app"])
            f_aud, lip_a = self.nets["audio"](mel.flatten(0, 1))
        motion = self.nets["motion"]
        f = motion.trunk(frames.flatten(0, 1))  # frozen trunk: no graph (its params do not require grad)
        emo = motion.head("emo", f)  # (B*K, emo) trainable head
        lip_a = lip_a.view(b, k, -1)
        with torch.no_grad():
            fk = f.view(b, k, -1)
            eye = motion.head("eye", fk[:, c])
            # the centre frame and, for smooth_pose, its neighbours that exist in the window
            lo, hi = (max(c - 1, 0), min(c + 2, k)) if self.config.inference_codes else (c, c + 1)
            poses = motion.head("pose", fk[:, lo:hi].flatten(0, 1)).view(b, hi - lo, -1)
            pose, g_pose, g_lip = poses[:, c - lo], poses.mean(1), lip_a[:, c]
            if self.config.inference_codes:
                w = gaussian_kernel(3, 1.0).to(lip_a)  # smooth_lip: zero padding beyond the window
                g_lip = sum(w[j + 1] * lip_a[:, c + j] for j in (-1, 0, 1) if 0 <= c + j < k)
        emo_bar = emo.view(b, k, -1).mean(1)
        s_lip, s_eye, s_emo = self._scales()
        return dict(b=b, k=k, c=c, f_app=f_app, f_sp=f_sp, f_aud=f_aud, lip_a=lip_a, emo=emo, emo_bar=emo_bar,
                    pose=pose, eye=eye, g_lip=g_lip * s_lip, g_emo=emo_bar * s_emo, g_eye=eye * s_eye, g_pose=g_pose)

    def generate(self, batch, generator=None):
        z = self.codes(batch)
        g = generator if generator is not None else self.generator
        style = assemble_style(z["f_app"], z["g_lip"], z["g_emo"], z["g_eye"], z["g_pose"])
        fake = g(style, z["f_sp"], noise_mode=self.noise_mode)
        return {"fake": fake, "real": batch["frames"][:, z["c"]], "style": style, **z}

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
        lip = z["g_lip"]

        def render(f_app, f_sp, lip_, emo_, eye_, pose_):
            return g(assemble_style(f_app, lip_, emo_, eye_, pose_), f_sp, noise_mode="const")

        real = sub["frames"][:, c]
        fake = render(z["f_app"], z["f_sp"], lip, z["g_emo"], z["g_eye"], z["g_pose"])
        media = {"recon": image_grid([sub["app"], real, fake])}
        for factor in ("emo", "pose"):
            cells = []
            for i in range(n):
                emo_ = z["g_emo"][i:i + 1].expand(n, -1) if factor == "emo" else z["g_emo"]
                pose_ = z["g_pose"][i:i + 1].expand(n, -1) if factor == "pose" else z["g_pose"]
                cells.append(render(z["f_app"], z["f_sp"], lip, emo_, z["g_eye"], pose_))
            media[f"swap_{factor}"] = swap_grid(real, sub["app"], torch.stack(cells))
        # short video of sample 0: every frame of the window rendered with its own pose/eye/lip, real | fake
        motion = self.nets["motion"]
        frames0 = sub["frames"][0]
        enc = motion.encode(frames0, heads=("pose", "eye"))
        k = frames0.shape[0]
        s_lip, s_eye, _ = self._scales()
        lip0, pose0 = z["lip_a"][0], enc["pose"]
        if self.config.inference_codes:
            lip0, pose0 = smooth_lip(lip0), smooth_pose(pose0)
        vid = render(z["f_app"][:1].expand(k, -1), z["f_sp"][:1].expand(k, -1, -1, -1), lip0 * s_lip,
                     z["g_emo"][:1].expand(k, -1), enc["eye"] * s_eye, pose0)
        media["video"] = torch.cat([frames0, vid], dim=-1)
        return media
