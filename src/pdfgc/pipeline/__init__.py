"""PD-FGC inference: `Pipeline.from_pretrained(ckpt_dir)(source, audio, pose=..., exp=..., eye=..., controls=...)`.

Light on purpose: importing this package never imports Lightning, Hydra or wandb (checked by tests/test_package.py).
See docs/inference.md.
"""
from pdfgc.models.latent import Controls, ControlsError
from pdfgc.pipeline.core import Pipeline, PipelineOutput, make_panel, write_output
from pdfgc.pipeline.errors import PipelineError
from pdfgc.pipeline.settings import InferenceSettings

parse_controls = Controls.parse  # the one parser of user control input (an alias, kept for existing callers)

__all__ = ["Pipeline", "PipelineOutput", "PipelineError", "InferenceSettings", "Controls", "ControlsError",
           "parse_controls", "make_panel", "write_output"]
