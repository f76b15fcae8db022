"""Train PD-FGC progressively: `python train.py stage=motion` ... `stage=emo`, or the whole chain with
`python train.py experiment=demo` (CPU, minutes; the demo task: train, then video + evaluation) /
`experiment=pdfgc_vox2_v1` (GPUs). `--cfg job` prints the composed config. See docs/training.md.

A problem with the settings or the inputs prints one line and exits with status 2."""
import hydra
from omegaconf import DictConfig

from pdfgc.stages import register_configs

register_configs()  # the typed stage settings (configs/stage/*.yaml build on them)


@hydra.main(config_path="configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    from pdfgc.errors import report_user_errors

    with report_user_errors("train"):
        if (cfg.get("demo") or {}).get("enabled", False):
            from pdfgc.demo import run_demo

            run_demo(cfg)
        else:
            from pdfgc.train import train

            train(cfg)


if __name__ == "__main__":
    import sys

    from pdfgc.errors import report_user_errors
    from pdfgc.train.config import check_command_line

    with report_user_errors("train"):
        check_command_line(sys.argv[1:])  # settings errors: one line, exit 2, before Hydra starts the job
    main()
