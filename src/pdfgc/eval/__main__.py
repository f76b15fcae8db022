"""`python -m pdfgc.eval videos|synthetic|stage1|train-estimator ...` (see docs/evaluation.md)."""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pdfgc.eval", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("videos", help="metrics over a folder of generated videos vs references (matched by name)")
    v.add_argument("--pred", required=True, help="folder of generated videos")
    v.add_argument("--ref", required=True, help="folder of reference videos (same file names)")
    v.add_argument("--out", default=None, help="folder for report.json / report.md (default: --pred)")
    v.add_argument("--lpips-weights", default=None, help="torchvision backbone state dict for LPIPS "
                   "(e.g. alexnet-owt-7be5be79.pth); LPIPS is skipped without it")
    v.add_argument("--lpips-net", default="alex", choices=("alex", "vgg", "squeeze"))
    v.add_argument("--syncnet", default=None, help="SyncNet weights (syncnet_v2.model); LSE is skipped without it")
    v.add_argument("--csim", default="dlib", help="'dlib' (default, offline), a TorchScript embedding file "
                   "(e.g. ArcFace; TorchScript is a program: give only a file you trust, docs/security.md), or "
                   "'none'")
    v.add_argument("--no-lmd", action="store_true", help="skip LMD / M-LMD")
    v.add_argument("--landmarks", default="dlib", help="landmark backend for LMD (dlib or face_alignment)")
    v.add_argument("--stride", type=int, default=5, help="use every k-th frame for CSIM and LMD (the slow metrics; "
                   "dlib CSIM costs ~0.2 s per frame on one CPU thread)")
    v.add_argument("--max-frames", type=int, default=None)
    v.add_argument("--device", default="cpu")

    s = sub.add_parser("synthetic", help="disentanglement benchmark on the synthetic test identities")
    s.add_argument("--ckpt", required=True, help="checkpoint folder (official four .pth or a pdfgc export)")
    s.add_argument("--out", required=True, help="output folder (report.json, report.md, leakage.png)")
    s.add_argument("--estimator", default=None, help="factor estimator file: loaded if it exists, else trained "
                   "and saved there (default: the shipped pdfgc/eval/assets/estimator_<size>.safetensors when there "
                   "is one for this size and data seed, else OUT/estimator.pt)")
    s.add_argument("--clips", type=int, default=8, help="test samples (source + two drivers each)")
    s.add_argument("--frames", type=int, default=16, help="generated frames per sample")
    s.add_argument("--image-size", type=int, default=None, help="render size (default and only choice: the "
                   "model's)")
    s.add_argument("--data-seed", type=int, default=0, help="synthetic dataset seed used in training")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--estimator-steps", type=int, default=1500, help="training steps when an estimator "
                   "has to be trained (no file, no shipped one; 1500: ~5 min on one CPU thread)")
    s.add_argument("--lpips-weights", default=None)
    s.add_argument("--device", default="cpu")

    g = sub.add_parser("stage1", help="probe the stage-1 generator G0: does it carry each factor of a driver to "
                       "another face? (synthetic test identities)")
    g.add_argument("--ckpt", required=True, help="a stage checkpoint holding generator0, e.g. "
                   "outputs/<run>/1_motion/checkpoints/last.ckpt")
    g.add_argument("--out", required=True, help="output folder (report.json, report.md)")
    g.add_argument("--estimator", default=None, help="factor estimator file: loaded if it exists, else trained "
                   "and saved there (default: the shipped estimator for this size, else OUT/estimator.pt)")
    g.add_argument("--clips", type=int, default=8)
    g.add_argument("--frames", type=int, default=16)
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--estimator-steps", type=int, default=1500)
    g.add_argument("--device", default="cpu")

    t = sub.add_parser("train-estimator", help="train the factor estimator once on renders of the synthetic train "
                       "identities and write it (the shipped src/pdfgc/eval/assets/estimator_56.safetensors is "
                       "reproduced by the defaults)")
    t.add_argument("--out", required=True, help="output file (.safetensors; a partial file is written at every "
                   "checkpoint)")
    t.add_argument("--image-size", type=int, default=56)
    t.add_argument("--ids", type=int, default=10000, help="train identities (one clip each)")
    t.add_argument("--frames-per-id", type=int, default=8, help="decorrelated renders per identity")
    t.add_argument("--steps", type=int, default=14000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--width", type=int, default=24)
    t.add_argument("--branch-channels", type=int, default=16)
    t.add_argument("--checkpoint-every", type=int, default=1000, help="measure held-out figures and save every "
                   "this many steps")
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    t.add_argument("--float32", action="store_true", help="keep float32 weights (default: the final weights are "
                   "rounded to float16 and measured as such, a file half the size)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, KeyError) as e:  # user errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "videos":
        from pdfgc.eval.videos import evaluate_videos

        rep = evaluate_videos(args.pred, args.ref, out_dir=args.out or args.pred, lpips_weights=args.lpips_weights,
                              lpips_net=args.lpips_net, syncnet=args.syncnet,
                              csim=None if args.csim == "none" else args.csim, lmd=not args.no_lmd,
                              landmarks=args.landmarks, stride=args.stride, max_frames=args.max_frames,
                              device=args.device)
        print(open(rep["files"]["markdown"]).read())
    elif args.command == "train-estimator":
        import torch

        from pdfgc.eval.instrument import bars_table, train_instrument

        for k in ("ids", "frames_per_id", "steps", "batch_size", "image_size", "threads"):
            if getattr(args, k) < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
        if not args.out.endswith(".safetensors"):
            raise ValueError(f"--out {args.out}: the estimator is written as .safetensors")
        torch.set_num_threads(args.threads)
        est = train_instrument(image_size=args.image_size, ids=args.ids, frames_per_id=args.frames_per_id,
                               steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, width=args.width,
                               branch_channels=args.branch_channels, data_seed=args.data_seed, seed=args.seed,
                               out=args.out, checkpoint_every=args.checkpoint_every, half=not args.float32)
        print(f"wrote {args.out}")
        for name, v, bar, met in bars_table(est.metrics["redrawn"]):
            print(f"  {name:12s} {v:.3f}  bar {bar}  {'met' if met else 'NOT met'}")
    elif args.command == "stage1":
        from pdfgc.eval.stage1 import run_stage1_probe

        rep = run_stage1_probe(args.ckpt, args.out, estimator=args.estimator, clips=args.clips, frames=args.frames,
                               data_seed=args.data_seed, seed=args.seed, estimator_steps=args.estimator_steps,
                               device=args.device)
        print(open(rep["files"]["markdown"]).read())
    else:
        from pdfgc.eval.benchmark import run_synthetic_benchmark

        rep = run_synthetic_benchmark(args.ckpt, args.out, estimator=args.estimator, clips=args.clips,
                                      frames=args.frames, image_size=args.image_size, data_seed=args.data_seed,
                                      seed=args.seed, estimator_steps=args.estimator_steps,
                                      lpips_weights=args.lpips_weights, device=args.device)
        print(open(rep["files"]["markdown"]).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
