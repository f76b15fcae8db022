"""Package layout: `pdfgc` lives in src/pdfgc; the fused ops live in src/ops but import as `pdfgc_ops`.

The ops directory keeps the product card's layout (`src/ops/`) while installing under a name that cannot collide
with the many StyleGAN-derived projects that ship a top-level `op`/`ops` package.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages("src", include=["pdfgc", "pdfgc.*"]) + ["pdfgc_ops", "pdfgc._model_configs"],
    # configs/model ships inside the package too, so a non-editable install can still build the networks
    package_dir={"": "src", "pdfgc_ops": "src/ops", "pdfgc._model_configs": "configs/model"},
)
