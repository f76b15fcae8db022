"""pdfgc networks (SPEC 2) and checkpoint I/O. Submodules import torch only (plus omegaconf/safetensors where
used)."""
from .appearance import AppearanceEncoder
from .audio import AudioEncoder
from .bundle import PDFGCModels
from .config import build_component, load_model_config, resolve_model_config
from .discriminator import MultiscaleDiscriminator
from .generator import Generator
from .latent import apply_controls, assemble_style, eye_mask
from .motion import MotionEncoder

__all__ = ["AppearanceEncoder", "AudioEncoder", "Generator", "MotionEncoder", "MultiscaleDiscriminator",
           "PDFGCModels", "apply_controls", "assemble_style", "build_component", "eye_mask", "load_model_config",
           "resolve_model_config"]
