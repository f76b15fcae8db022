"""Where does lip control get lost? Linear read-out of the mouth from each code on the lip path of a trained model.

    python benchmarks/probe_lip.py --ckpt RUN/export          # a pdfgc export (e.g. of `make demo`)

On synthetic clips (56 px or the model's size), per video frame: the ground-truth mouth (opening, width) and
- `audio lip`: the audio encoder's lip code of the frame's mel window (what drives G's mouth at inference),
- `audio feat`: the audio encoder's 512-d feature before the lip head,
- `visual lip`: the motion encoder's lip code of the frame itself (what the lip stage aligns the audio code with),
- `trunk`: the motion encoder's unified feature of the frame.
A ridge regression (standardised inputs) is fitted on frames of the train identities and scored by R^2 on
frames of held-out identities. The audio codes can only be as good as the audio determines the mouth: the
`vowel+envelope` row is that ceiling, a regression on the renderer's own audio plan (one-hot vowel x envelope).
Read with the control error of the benchmark: a high R^2 of `audio lip` with a poor mouth control error puts the
loss in G (how it renders the lip code); a low one puts it in the lip stage.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def _features(models, src, clips, frames) -> dict[str, np.ndarray]:
    from pdfgc.data.audio import mel_windows
    from pdfgc.eval.estimator import to_tensor

    feats: dict[str, list] = {k: [] for k in ("audio lip", "audio feat", "visual lip", "trunk", "plan", "mouth")}
    with torch.inference_mode():
        for i in clips:
            mel = torch.from_numpy(mel_windows(src.mel(i), frames))
            f_aud, lip = models.audio(mel)
            x = to_tensor(src.frames(i, frames))
            trunk = models.motion.trunk(x)
            vis = models.motion.head("lip", trunk)
            f = src.factors(i, frames)
            vowel = np.asarray(f["vowel"])
            plan = np.zeros((len(frames), 6))
            plan[np.arange(len(frames)), np.where(vowel >= 0, vowel + 1, 0)] = np.asarray(f["envelope"])
            for k, v in (("audio lip", lip), ("audio feat", f_aud), ("visual lip", vis), ("trunk", trunk)):
                feats[k].append(v.float().numpy())
            feats["plan"].append(plan)
            feats["mouth"].append(np.asarray(f["mouth"], np.float64))
    return {k: np.concatenate(v) for k, v in feats.items()}


def ridge_r2(xtr, ytr, xte, yte, lam: float = 10.0) -> np.ndarray:
    """Per-output R^2 on the test rows of a ridge fit on the train rows (`pdfgc.stages.emo.ridge_fit`: standardised
    inputs, intercept not penalised)."""
    from pdfgc.stages.emo import ridge_fit

    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
    a, b = ridge_fit(t(xtr), t(ytr), lam)
    pred = (t(xte) @ a.t() + b).numpy()
    return 1 - ((pred - yte) ** 2).sum(0) / ((yte - yte.mean(0)) ** 2).sum(0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a pdfgc export folder (or anything Pipeline.from_pretrained reads)")
    p.add_argument("--clips", type=int, default=60, help="clips per split")
    p.add_argument("--lam", type=float, default=10.0, help="ridge")
    args = p.parse_args(argv)
    from pdfgc.data.synthetic import SyntheticSource
    from pdfgc.pipeline import Pipeline

    torch.set_num_threads(1)
    pipe = Pipeline.from_pretrained(args.ckpt, device="cpu")
    models = pipe.models.eval()
    frames = np.arange(2, 120, 3)
    out = {}
    for split in ("train", "test"):
        src = SyntheticSource(image_size=pipe.image_size, split=split, num_frames=125)
        clips = np.random.default_rng(0).choice(len(src), size=min(args.clips, len(src)), replace=False)
        out[split] = _features(models, src, clips, frames)
    tr, te = out["train"], out["test"]
    print(f"mouth read-out, ridge {args.lam}, {len(tr['mouth'])} train / {len(te['mouth'])} held-out frames")
    print(f"{'input':16s} {'dims':>5s}  R2 opening  R2 width")
    for k in ("plan", "audio lip", "audio feat", "visual lip", "trunk"):
        r2 = ridge_r2(tr[k], tr["mouth"], te[k], te["mouth"], args.lam)
        name = "vowel+envelope" if k == "plan" else k
        print(f"{name:16s} {tr[k].shape[1]:5d}  {r2[0]:10.3f}  {r2[1]:8.3f}")


if __name__ == "__main__":
    main()
