"""PD-FGC inference: `python infer.py ckpt=DIR audio=speech.wav source=photo.jpg pose=... exp=... eye=...
controls=[all] out=result.mp4` (all settings: configs/infer.yaml; docs/inference.md).

A thin Hydra wrapper over `pdfgc.pipeline.cli.run_inference`; bad input prints one line and exits with status 2.
"""
import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="configs", config_name="infer", version_base=None)
def main(cfg: DictConfig) -> None:
    from pdfgc.pipeline.cli import run_inference, user_error_types

    try:
        # a plain dict (mandatory '???' values stay the string '???', reported as missing settings)
        run_inference(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    except user_error_types() as e:
        print(f"pdfgc infer: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
