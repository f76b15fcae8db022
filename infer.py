"""PD-FGC inference: `python infer.py ckpt=DIR audio=speech.wav source=photo.jpg pose=... exp=... eye=...
controls=[all] out=result.mp4` (settings: `pdfgc.pipeline.settings.InferenceSettings`, composed through
configs/infer.yaml; `python infer.py --help`; docs/inference.md).

A thin wrapper over `pdfgc.pipeline.cli.main`: bad input (an unknown key or a wrong type included) prints one line
and exits with status 2, before anything heavy is loaded.
"""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    from pdfgc.pipeline.cli import main

    main(config_dir=CONFIG_DIR)
