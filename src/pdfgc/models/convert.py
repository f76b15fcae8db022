"""Convert checkpoints: `python -m pdfgc.models.convert SRC DST [--to pdfgc|official] [--config NAME]`.

SRC is a released checkpoint folder (four .pth files) or a pdfgc export; DST receives the other format
(or the one named by --to)."""
from __future__ import annotations

import argparse
import logging
import sys

from .bundle import load_any, save_official, save_pretrained
from .checkpoint import CheckpointError, detect_format


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pdfgc.models.convert", description=__doc__.splitlines()[0])
    p.add_argument("src", help="official checkpoint folder or pdfgc export")
    p.add_argument("dst", help="output folder")
    p.add_argument("--to", choices=("pdfgc", "official"), default=None,
                   help="output format (default: the other one)")
    p.add_argument("--config", default=None, help="model config of an official SRC (default: pdfgc)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        fmt = detect_format(a.src)
        to = a.to or ("pdfgc" if fmt == "official" else "official")
        # conversion is lossless: the appearance identity head is carried over too
        kwargs = {"config": a.config, "load_identity_head": True} if fmt == "official" else {}
        models = load_any(a.src, **kwargs)
        out = save_pretrained(models, a.dst) if to == "pdfgc" else save_official(models, a.dst)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in models.parameters())
    print(f"converted {a.src} ({fmt}) -> {out} ({to}); {n / 1e6:.2f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
