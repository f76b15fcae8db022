"""Train PD-FGC progressively: `python train.py stage=motion` ... `stage=emo`, or the whole chain with
`python train.py experiment=demo` (CPU, minutes) / `experiment=pdfgc_vox2_v1` (GPUs). `--cfg job` prints the
composed config. See docs/training.md."""
import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    from pdfgc.training import train

    train(cfg)


if __name__ == "__main__":
    main()
