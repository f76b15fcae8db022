"""Training throughput per stage: iterations per second (and data-loading share) and peak memory.

    python benchmarks/bench_train.py                          # model=tiny, every stage, its configured batch size
    python benchmarks/bench_train.py --model pdfgc --batch-size 1 --iters 2 --warmup 1
    python benchmarks/bench_train.py --stages motion emo --experiment demo   # the demo's per-stage settings

Each stage runs in its own subprocess so that the reported peak RSS (ru_maxrss) belongs to that stage alone.
Timings are wall-clock per iteration (G+D steps for GAN stages) after `--warmup` iterations: the step itself plus
the wait for its batch (rendered by the loader workers, or in the main process with `--workers 0`); single-threaded
unless --threads is given. CUDA peak memory is reported when the run uses a GPU.

    python benchmarks/bench_train.py --experiment demo --stages motion --threads 2 --workers 0   # variants:
    python benchmarks/bench_train.py --experiment demo --stages motion --precision bf16-mixed    # also
    --channels-last, --no-mkldnn, --batch-size N
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_NAMES = ("motion", "lip", "pose", "eye", "emo")


def _one(args) -> dict:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from pdfgc.train.callbacks import AtomicCheckpointIO
    from pdfgc.train.config import compose
    from pdfgc.train.run import build_datamodule, build_stage

    overrides = [f"model={args.model}", "logger=none", f"paths.output_dir={args.out}",
                 "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                 f"trainer.accelerator={args.accelerator}"]
    if args.experiment:
        overrides += [f"experiment={args.experiment}"]
    overrides += [f"stage={args.stage}", *args.override]
    cfg = compose(overrides)
    if args.experiment and args.stage in (cfg.get("chain_stages") or {}):
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.stage = cfg.chain_stages[args.stage]
    from omegaconf import open_dict

    with open_dict(cfg):
        if args.batch_size:
            cfg.stage.batch_size = args.batch_size
        cfg.stage.iterations = args.warmup + args.iters
        cfg.stage.log.sample_every = 0
        cfg.stage.checkpoint.every = 0
        cfg.stage.init_from = None
        if args.workers >= 0:
            cfg.data.num_workers = args.workers
        if args.precision:
            cfg.trainer.precision = args.precision
    pl.seed_everything(0, verbose=False)
    module = build_stage(cfg)
    if args.channels_last:  # 4-d weights in NHWC: mkldnn then runs every convolution channels-last
        for prm in module.parameters():
            if prm.dim() == 4:
                prm.data = prm.data.contiguous(memory_format=torch.channels_last)
    loader = build_datamodule(cfg, module).train_dataloader()
    times: list[tuple[float, float]] = []

    class Timer(pl.Callback):
        def __init__(self):
            self.t_end = None
            self.t_start = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.t_start = time.perf_counter()
            self.data = 0.0 if self.t_end is None else self.t_start - self.t_end

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.t_end = time.perf_counter()
            times.append((self.t_end - self.t_start, self.data))

    trainer = instantiate(cfg.trainer, logger=False, callbacks=[Timer()], plugins=[AtomicCheckpointIO()],
                          max_steps=module.optimizer_steps(),
                          enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=loader)
    steady = times[args.warmup:]
    step = sum(t for t, _ in steady) / len(steady)
    data = sum(d for _, d in steady) / len(steady)
    wall = step + data  # what a run sees: the step plus the wait for its batch
    out = {"stage": args.stage, "model": args.model, "batch_size": int(cfg.stage.batch_size),
           "threads": args.threads, "workers": int(cfg.data.num_workers), "precision": str(cfg.trainer.precision),
           "s_per_it": wall, "it_per_s": 1.0 / wall, "step_s_per_it": step, "data_s_per_it": data,
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "device": str(trainer.strategy.root_device)}
    if trainer.strategy.root_device.type == "cuda":
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", default=list(STAGE_NAMES), choices=STAGE_NAMES)
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=0, help="0 = the stage config's batch size")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1 = the config's)")
    p.add_argument("--precision", default=None, help="trainer.precision, e.g. bf16-mixed (default: the config's)")
    p.add_argument("--override", nargs="*", default=[], help="Hydra overrides, e.g. model.generator0.channel_max=64")
    p.add_argument("--channels-last", action="store_true", help="convolution weights in channels-last layout")
    p.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn off (plain im2col convolutions)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--experiment", default=None, help="take per-stage settings from an experiment (e.g. demo)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:  # child process
        print("BENCH " + json.dumps(_one(args)), flush=True)
        return
    results = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), WANDB_MODE="disabled")
    for stage in args.stages:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--stage", stage, "--out", tmp, "--model", args.model,
                   "--batch-size", str(args.batch_size), "--iters", str(args.iters), "--warmup", str(args.warmup),
                   "--threads", str(args.threads), "--accelerator", args.accelerator,
                   "--workers", str(args.workers)] + ["--channels-last"] * args.channels_last \
                + ["--no-mkldnn"] * args.no_mkldnn
            if args.precision:
                cmd += ["--precision", args.precision]
            if args.override:
                cmd += ["--override", *args.override]
            if args.experiment:
                cmd += ["--experiment", args.experiment]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH ")), None)
            if line is None:
                print(f"{stage}: FAILED\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(line[6:])
            results.append(r)
            extra = f"  peak CUDA {r['peak_cuda_gib']:.2f} GiB" if "peak_cuda_gib" in r else ""
            print(f"{stage:7s} model={r['model']:5s} batch={r['batch_size']:3d}  {r['it_per_s']:7.3f} it/s  "
                  f"({r['s_per_it'] * 1000:8.1f} ms/it: step {r['step_s_per_it'] * 1000:7.1f}, data wait "
                  f"{r['data_s_per_it'] * 1000:6.1f})  "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB{extra}  [{r['device']}, {r['threads']} thread(s), "
                  f"{r['workers']} worker(s), {r['precision']}]",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
