"""Throughput of the synthetic talking-face source, per CPU core (one thread).

    python benchmarks/bench_synthetic.py [--sizes 64 224] [--frames 200] [--stage-samples 64]

Prints: rendering frames/s at each size (batched by clip, as `frames(i, idx)` renders them; the numba kernel
compile or cache load happens in a warm-up and is reported separately), audio+mel synthesis per clip, and
samples/s of every stage dataset at the smallest size (all per one core).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--frames", type=int, default=200, help="frames rendered per size")
    ap.add_argument("--stage-samples", type=int, default=64, help="samples per stage dataset (0 = skip)")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from pdfgc.data.stage_datasets import EmoDataset, EyeDataset, LipDataset, MotionDataset, PoseDataset
    from pdfgc.data.synthetic import SyntheticSource

    t = time.perf_counter()
    SyntheticSource(image_size=32, num_identities=4).frames(0, [0])
    print(f"kernel warm-up (numba compile or cache load): {time.perf_counter() - t:.2f} s")
    print(f"{'size':>6} {'frames':>7} {'s':>7} {'frames/s/core':>14}")
    for size in args.sizes:
        src = SyntheticSource(image_size=size, num_identities=50, num_frames=125, seed=0)
        for i in range(4):
            src.state(i)  # trajectories are not part of the rendering cost
        n, clip, t = 0, 0, time.perf_counter()
        while n < args.frames:
            k = min(100, args.frames - n)
            src.frames(clip % 4, np.arange(k) + 5)
            n += k
            clip += 1
        dt = time.perf_counter() - t
        print(f"{size:>6} {n:>7} {dt:>7.3f} {n / dt:>14.0f}")
    src = SyntheticSource(image_size=64, num_identities=50, num_frames=125, seed=1)
    src.mel(0)  # imports (librosa, scipy.signal) and the mel basis are one-time costs
    t = time.perf_counter()
    for i in range(1, 9):
        src.state(i)
    t_state = (time.perf_counter() - t) / 8
    t = time.perf_counter()
    for i in range(1, 9):
        src.audio(i)
    t_audio = (time.perf_counter() - t) / 8
    t = time.perf_counter()
    for i in range(1, 9):
        src.mel(i)
    t_mel = (time.perf_counter() - t) / 8
    print(f"per 5 s clip: trajectories {t_state * 1000:.1f} ms, speech synthesis {t_audio * 1000:.1f} ms, "
          f"mel {t_mel * 1000:.1f} ms")
    if args.stage_samples:
        size = min(args.sizes)
        print(f"stage datasets at {size} px (samples/s/core, incl. trajectories, audio, mel, augmentation):")
        datasets = (("motion", MotionDataset), ("lip", LipDataset), ("pose", PoseDataset), ("eye", EyeDataset),
                    ("emo", EmoDataset))
        for k, (stage, cls) in enumerate(datasets):
            src = SyntheticSource(image_size=size, num_identities=500, num_frames=125, seed=2)  # cold cache
            ds = cls(src, length=args.stage_samples, seed=k)
            ds[0]
            t = time.perf_counter()
            for i in range(1, args.stage_samples + 1):
                ds[i]
            dt = time.perf_counter() - t
            print(f"  {stage:>6}: {args.stage_samples / dt:8.1f} samples/s")


if __name__ == "__main__":
    main()
