"""PD-FGC inference: `Pipeline.from_pretrained(ckpt_dir)(source, audio, pose=..., exp=..., eye=..., controls=...)`.

Light on purpose: importing this package never imports Lightning, Hydra or wandb (checked by tests/test_package.py).
See docs/inference.md.
"""
from pdfgc.pipeline.controls import Controls, parse_controls
from pdfgc.pipeline.core import Pipeline, PipelineOutput, make_panel, write_output
from pdfgc.pipeline.errors import PipelineError

__all__ = ["Pipeline", "PipelineOutput", "PipelineError", "Controls", "parse_controls", "make_panel",
           "write_output"]
