"""Training orchestration: `train(cfg)` (one stage or the progressive chain), `run_stage`, the data module with its
resumable sampler, the Lightning callbacks, the training-checkpoint format (`pdfgc.train.checkpoint`, the only
reader and writer of it) and the inference export.

Importing `pdfgc.train.checkpoint` alone stays light (torch only): evaluation tools read checkpoints through it.
"""


def __getattr__(name):
    if name in ("train", "run_stage", "build_stage", "build_datamodule", "check_run_config"):
        from pdfgc.train import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = ["train", "run_stage", "build_stage", "build_datamodule", "check_run_config"]
