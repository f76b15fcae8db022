"""The inference export of a training run: the four inference networks of a stage checkpoint in the pdfgc export
format (`PDFGCModels.save_pretrained`), so `python infer.py ckpt=<export>` works."""
from __future__ import annotations

from pathlib import Path

from pdfgc.models.bundle import PDFGCModels
from pdfgc.models.config import INFERENCE_COMPONENTS, build_component
from pdfgc.train import checkpoint as ckpt_format


def export_from_checkpoint(ckpt_path, out_dir) -> Path:
    """Write the inference export from a stage checkpoint that holds (or carries) appearance, motion, audio and a
    generator; the EMA generator is preferred. Networks are rebuilt from the model config stored in the checkpoint
    through the library's allow-listed builder. Returns the export folder."""
    ckpt = ckpt_format.read(ckpt_path)
    missing = [n for n in INFERENCE_COMPONENTS if n not in ckpt.components and f"{n}_ema" not in ckpt.components]
    if missing:
        raise ckpt_format.TrainingCheckpointError(
            f"{ckpt_path}: cannot export, no {missing} network(s) in the checkpoint (has {sorted(ckpt.components)}); "
            "export needs a checkpoint of the emo stage (or later)")
    model_cfg = ckpt.model_config
    nets = {}
    for name in INFERENCE_COMPONENTS:
        _, sd = ckpt.network(name, prefer_ema=(name == "generator"))
        net = build_component(model_cfg[name], source=f"{ckpt_path} [model.{name}]")
        net.load_state_dict(sd, strict=True)
        nets[name] = net.eval()
    return Path(PDFGCModels(**nets).save_pretrained(out_dir))
