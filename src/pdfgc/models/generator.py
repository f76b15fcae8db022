"""PD-FGC generator: StyleGAN2 synthesis network with a spatial appearance input (SPEC 2.4, 2.5).

The appearance encoder's spatial code f_sp (B, C0, s0, s0) replaces StyleGAN2's constant input, and one style
vector (B, style_dim) = [f_app | lip | emo | eye | pose] modulates every layer. Resolutions are s0 * 2^k with
s0 = 7 when image_size % 7 == 0 (the released 7 -> 224 model), else s0 = 4 (StyleGAN's 4 -> 2^k).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from pdfgc.constants import IMAGE_SIZE, STYLE_DIM

from .layers import DEFAULT_BLUR_KERNEL, NOISE_MODES, ConstantInput, EqualLinear, PixelNorm, StyledConv, ToRGB


def channel_table(image_size: int, channel_multiplier: int = 2, channel_base: int = 256,
                  channel_max: int = 512, s0: int | None = None) -> dict[int, int]:
    """Channels per resolution. With the defaults this is the reference table: {7..56: 512, 112: 256, 224: 128}
    (7-based) or {4..32: 512, 64: 512, 128: 256, 256: 128, ...} (2^k-based), i.e.
    min(channel_max, channel_multiplier * channel_base * ref / res) with ref = 56 (7-based) or 64 (2^k-based).
    `s0`: the start size (default: `start_size(image_size)`)."""
    s0 = start_size(image_size, s0)
    ref = 56 if s0 % 7 == 0 else 64
    table = {}
    res = s0
    while res <= image_size:
        table[res] = int(min(channel_max, channel_multiplier * channel_base * ref // res))
        res *= 2
    return table


def start_size(image_size: int, s0: int | None = None) -> int:
    """7 for 7*2^k sizes, 4 for 2^k sizes (k >= 0 resp. k >= 2); ValueError otherwise. With `s0` given (a finer
    start, e.g. 14 for 56 px: the tiny model's choice), checks that image_size = s0 * 2^k (k >= 1) and returns it."""
    if s0 is not None:
        s0 = int(s0)
        k = image_size // s0 if s0 >= 4 else 0
        if k < 2 or image_size % s0 or k & (k - 1):
            raise ValueError(f"Generator: start_size {s0} does not divide image_size {image_size} into a power of two "
                             ">= 2 (e.g. 7 or 14 for 56 px)")
        return s0
    for s0 in (7, 4):
        if image_size % s0 == 0:
            k = image_size // s0
            if k >= 1 and (k & (k - 1)) == 0:
                return s0
    raise ValueError(f"Generator: image_size must be 7*2^k (e.g. 56, 112, 224) or 2^k >= 4 (e.g. 64, 256), "
                     f"got {image_size}")


_start_size = start_size  # the parameter of the same name shadows it inside Generator


class Generator(nn.Module):
    """StyleGAN2 generator with spatial input; `forward(style, spatial) -> image (B,3,S,S)` in (-1,1) (tanh).

    The mapping MLP `style` (PixelNorm + n_mlp EqualLinear, lr_mul lr_mlp) exists only so that the released
    checkpoint's `style.1..8` keys load; the reference feeds the style directly (input_is_latent=True) and so do we:
    it is never run. `input.input` likewise only exists for the keys (f_sp replaces it).
    """

    def __init__(
        self,
        image_size: int = IMAGE_SIZE,     # output side S; 7*2^k or 2^k
        style_dim: int = STYLE_DIM,       # length of the style vector fed to every modulation
        feature_encoded_dim: Optional[int] = None,  # input width of the unused mapping MLP (None: style_dim)
        n_mlp: int = 8,                   # layers of the unused mapping MLP
        lr_mlp: float = 0.01,             # its learning-rate multiplier (affects its init only)
        channel_multiplier: int = 2,      # StyleGAN2 width knob
        channel_base: int = 256,          # channels at 56 (7-based) or 64 px before the multiplier
        channel_max: int = 512,           # cap; also the spatial input channels at s0
        blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL,
        conv_impl: str = "fused",         # "fused" (shared-weight batch conv) or "grouped" (reference formulation)
        start_size: Optional[int] = None,  # side of the spatial input (None: 7 or 4 from image_size, the reference)
    ):
        super().__init__()
        self.config = dict(image_size=image_size, style_dim=style_dim, feature_encoded_dim=feature_encoded_dim,
                           n_mlp=n_mlp, lr_mlp=lr_mlp, channel_multiplier=channel_multiplier,
                           channel_base=channel_base, channel_max=channel_max, blur_kernel=list(blur_kernel),
                           conv_impl=conv_impl)
        if start_size is not None and int(start_size) != _start_size(image_size):
            self.config["start_size"] = int(start_size)  # only then: configs of earlier checkpoints stay as they were
        self.image_size = image_size
        self.style_dim = style_dim
        # CPU inference runs the fused convolutions in channels_last (NHWC) layout, oneDNN's fast path (measured
        # ~15% less CPU time per frame at 224 px); set False to keep NCHW. The grouped (reference) path stays NCHW.
        self.channels_last_cpu = True
        fe_dim = feature_encoded_dim or style_dim
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(fe_dim, style_dim, lr_mul=lr_mlp,
                                                              activation="fused_lrelu") for _ in range(n_mlp)])
        self.start_size = s0 = _start_size(image_size, start_size)
        self.channels = channel_table(image_size, channel_multiplier, channel_base, channel_max, s0)
        c0 = self.channels[s0]
        self.spatial_channels = c0
        self.input = ConstantInput(c0, s0)
        self.conv1 = StyledConv(c0, c0, 3, style_dim, blur_kernel=blur_kernel, impl=conv_impl)
        self.to_rgb1 = ToRGB(c0, style_dim, upsample=False, impl=conv_impl)
        self.log_size = int(round(math.log2(image_size // s0)))
        self.num_layers = 2 * self.log_size + 1
        self.n_latent = 2 * self.log_size + 2
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = s0 * 2 ** ((i + 1) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        cin = c0
        for i in range(1, self.log_size + 1):
            cout = self.channels[s0 * 2**i]
            self.convs.append(StyledConv(cin, cout, 3, style_dim, upsample=True, blur_kernel=blur_kernel,
                                         impl=conv_impl))
            self.convs.append(StyledConv(cout, cout, 3, style_dim, blur_kernel=blur_kernel, impl=conv_impl))
            self.to_rgbs.append(ToRGB(cout, style_dim, blur_kernel=blur_kernel, impl=conv_impl))
            cin = cout

    @staticmethod
    def input_shape(image_size: int = IMAGE_SIZE, channel_multiplier: int = 2, channel_base: int = 256,
                    channel_max: int = 512, start_size: Optional[int] = None, **_) -> tuple[int, int]:
        """(start size s0, channels C0) of the spatial input this configuration expects, without building it (the
        appearance encoder's f_sp must be (B, C0, s0, s0))."""
        s0 = _start_size(image_size, start_size)
        return s0, channel_table(image_size, channel_multiplier, channel_base, channel_max, s0)[s0]

    def style_layers(self) -> dict[str, EqualLinear]:
        """Every layer that reads the style vector (the modulation of each modulated convolution, ToRGB included),
        by parameter prefix in the state_dict, in forward order. Their input columns follow the style layout
        ([f_app | lip | emo | eye | pose] for G), which is what `g0_transfer` in the emo stage rewrites."""
        from .layers import ModulatedConv2d

        return {f"{name}.modulation": m.modulation for name, m in self.named_modules()
                if isinstance(m, ModulatedConv2d)}

    def noise_layers(self):
        """The NoiseInjection modules in noise-buffer order (noise_0 = conv1, noise_i = convs[i-1])."""
        return [self.conv1.noise] + [c.noise for c in self.convs]

    def reset_noise(self) -> None:
        """Drop every cached noise map (the next 'cached' forward draws new ones)."""
        for n in self.noise_layers():
            n.reset_noise()

    def forward(self, style: torch.Tensor, spatial: Optional[torch.Tensor] = None, noise_mode: str = "cached",
                rng: Optional[torch.Generator] = None, return_rgb_styles: bool = False):
        """Synthesise images.

        style: (B, style_dim) (one w for every layer, as the reference) or (B, n_latent, style_dim);
        spatial: (B or 1, C0, s0, s0) spatial appearance code (None: the learned constant `input.input`);
        noise_mode: "cached" (reference, default), "const" (checkpoint buffers), "none" or "random";
        rng: optional torch.Generator used when a noise map is drawn.
        Returns image (B, 3, S, S) in (-1, 1); with return_rgb_styles also the list of ToRGB modulations (B, C).
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"Generator: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if style.ndim == 2:
            if style.shape[1] != self.style_dim:
                raise ValueError(f"Generator: style has {style.shape[1]} dims, expected style_dim={self.style_dim}")
            latent = [style] * self.n_latent
        else:
            if style.ndim != 3 or style.shape[1:] != (self.n_latent, self.style_dim):
                raise ValueError(f"Generator: style must be (B, {self.style_dim}) or (B, {self.n_latent}, "
                                 f"{self.style_dim}), got {tuple(style.shape)}")
            latent = [style[:, i] for i in range(self.n_latent)]
        b = style.shape[0]
        if spatial is None:
            out = self.input(b)
        else:
            exp = (b, self.spatial_channels, self.start_size, self.start_size)
            if spatial.shape[0] == 1 and b > 1:
                spatial = spatial.expand(b, -1, -1, -1)  # one appearance for the whole batch
            if tuple(spatial.shape) != exp:
                raise ValueError(f"Generator: spatial input has shape {tuple(spatial.shape)}, expected {exp} "
                                 "(appearance encoder spatial_dim / start size must match the generator)")
            out = spatial
        if self.channels_last_cpu and out.device.type == "cpu" and self.config["conv_impl"] == "fused":
            out = out.contiguous(memory_format=torch.channels_last)  # every later layer keeps this layout
        bufs = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        out = self.conv1(out, latent[0], noise=bufs[0], noise_mode=noise_mode, rng=rng)
        skip, s = self.to_rgb1(out, latent[1])
        rgb_styles = [s]
        i = 1
        for j, to_rgb in enumerate(self.to_rgbs):
            # `out` is a layer output owned here whose last use is the next conv (ToRGB has already read it),
            # so the convs may scale it in place
            out = self.convs[2 * j](out, latent[i], noise=bufs[i], noise_mode=noise_mode, rng=rng,
                                    consume_input=True)
            out = self.convs[2 * j + 1](out, latent[i + 1], noise=bufs[i + 1], noise_mode=noise_mode, rng=rng,
                                        consume_input=True)
            skip, s = to_rgb(out, latent[i + 2], skip)
            rgb_styles.append(s)
            i += 2
        image = torch.tanh(skip).contiguous()  # NCHW for callers, whatever layout the last layer produced
        if return_rgb_styles:
            return image, rgb_styles
        return image
