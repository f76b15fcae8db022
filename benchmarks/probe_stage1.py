"""Stage 1 on 4 fixed samples (`debug=overfit`): how sharp does G0 reconstruct them, and how fast?

    python benchmarks/probe_stage1.py --out /tmp/ov                       # stage 1 with its stage defaults
    python benchmarks/probe_stage1.py --out /tmp/ov --recipe demo         # the demo's stage-1 settings
    python benchmarks/probe_stage1.py --out /tmp/ov --recipe demo stage.iterations=600 stage.loss.weights.lap=0

Prints the PSNR (dB) of the EMA and the raw generator against the 4 driving frames, the copy-appearance baseline
and seconds per iteration (issue 12 item 2's milestone: >= 30 dB in a few hundred iterations). Extra arguments are
Hydra overrides of the stage (`stage.` keys) applied after the recipe.
"""
from __future__ import annotations

import argparse
import json
import time

# the demo's stage-1 settings as `stage.` overrides, read from configs/experiment/demo.yaml
RECIPES = ("stage", "demo")


def recipe_overrides(name: str) -> list[str]:
    if name == "stage":
        return []
    from omegaconf import OmegaConf

    from pdfgc.train.config import config_dir

    demo = OmegaConf.load(config_dir() / "experiment" / "demo.yaml")
    motion = OmegaConf.to_container(demo.chain_stages.motion, resolve=True)
    out = []

    def flat(prefix, node):
        for k, v in node.items():
            if isinstance(v, dict) and k == "lr_mul":  # a dict that starts empty: new keys need `+`
                out.extend(f"+{prefix}{k}.{c}={m}" for c, m in v.items())
            elif isinstance(v, dict):
                flat(f"{prefix}{k}.", v)
            elif k in ("iterations", "log", "checkpoint"):
                continue
            else:
                out.append(f"{prefix}{k}={json.dumps(v).replace(' ', '')}")
    flat("stage.", motion)
    return out


def run(out: str, recipe: str = "demo", overrides=(), threads: int = 1) -> dict:
    import torch

    from pdfgc.eval.stage1 import reconstruction_psnr
    from pdfgc.train.config import compose
    from pdfgc.train.run import build_datamodule, build_stage, run_stage

    torch.set_num_threads(threads)
    cfg = compose(["stage=motion", "model=tiny", "debug=overfit", "logger=none", "data.num_workers=0",
                   "stage.batch_size=4", "stage.log.sample_every=0", "stage.checkpoint.every=0",
                   "trainer.enable_progress_bar=false", f"paths.output_dir={out}", f"hydra.run.dir={out}/hydra",
                   *recipe_overrides(recipe), *overrides])
    t0 = time.perf_counter()
    summary = run_stage(cfg)
    seconds = time.perf_counter() - t0
    dm = build_datamodule(cfg, build_stage(cfg))
    dm.setup()
    items = [dm.train_set[i] for i in range(int(cfg.data_limit))]
    batch = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("app", "drv")}
    res = reconstruction_psnr(summary["last_ckpt"], batch)
    res.update(iterations=int(cfg.stage.iterations), seconds=round(seconds, 1),
               s_per_it=round(seconds / int(cfg.stage.iterations), 3))
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", default="demo", choices=RECIPES)
    p.add_argument("--threads", type=int, default=1)
    args, overrides = p.parse_known_args(argv)
    res = run(args.out, args.recipe, overrides, args.threads)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
