"""Training stages of the progressive recipe (LightningModules). `STAGES[name]` maps a stage name to its class."""
from pdfgc.stages.base import GANStage, StageModule, components_from_checkpoint
from pdfgc.stages.emo import EmoStage
from pdfgc.stages.eye import EyeStage
from pdfgc.stages.lip import LipStage
from pdfgc.stages.motion import MotionStage
from pdfgc.stages.pose import PoseStage

STAGES = {c.STAGE: c for c in (MotionStage, LipStage, PoseStage, EyeStage, EmoStage)}
ORDER = ("motion", "lip", "pose", "eye", "emo")

__all__ = ["ORDER", "STAGES", "EmoStage", "EyeStage", "GANStage", "LipStage", "MotionStage", "PoseStage",
           "StageModule", "components_from_checkpoint"]
