"""Control error against training minutes (issue 12 item 5): how the recipe scales with budget.

    python benchmarks/plot_budget.py --out docs/img/budget.png \\
        --stage1 RUN/probes              # stage-1 probe reports of periodic checkpoints (one folder per checkpoint)
        --model demo=17.7:EVAL/report.json --model long=95:EVAL2/report.json

`--stage1`: a folder of `python -m pdfgc.eval stage1` outputs, one sub-folder per checkpoint, plus `minutes.txt`
(lines `<sub-folder> <minutes of training>`); plotted as G0's error (driven by another identity) per factor.
`--model LABEL=MINUTES:REPORT`: a `python -m pdfgc.eval synthetic` report of a whole chain after MINUTES of training,
plotted as one marker per factor. Dashed lines: copying the source (the bar a model must beat by half).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

FACTORS = ("mouth", "pose", "gaze", "blink", "emotion")


def stage1_curve(folder: Path) -> tuple[list[float], dict[str, list[float]], dict[str, float]]:
    rows = []
    for line in (folder / "minutes.txt").read_text().split("\n"):
        if line.strip():
            name, minutes = line.split()
            rows.append((float(minutes), json.loads((folder / name / "report.json").read_text())))
    rows.sort(key=lambda r: r[0])
    xs = [m for m, _ in rows]
    ys = {f: [r["errors"]["g0_other_identity"][f]["nerr"] for _, r in rows] for f in FACTORS}
    copy = {f: rows[-1][1]["errors"]["copy_source"][f]["nerr"] for f in FACTORS} if rows else {}
    return xs, ys, copy


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--stage1", default=None)
    p.add_argument("--model", action="append", default=[], help="LABEL=MINUTES:REPORT")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(FACTORS, ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange")))
    fig, ax = plt.subplots(1, 2 if args.stage1 else 1, figsize=(11 if args.stage1 else 6, 4), squeeze=False)
    panel = 0
    if args.stage1:
        a = ax[0][0]
        xs, ys, copy = stage1_curve(Path(args.stage1))
        for f in FACTORS:
            a.plot(xs, ys[f], "-o", ms=3, color=colours[f], label=f)
            a.axhline(copy[f], color=colours[f], ls="--", lw=0.8)
        a.set(title="stage 1 alone: G0 driven by another identity", xlabel="training minutes (stage 1)",
              ylabel="normalised control error (0 = follows driver)")
        a.set_ylim(0, 3.5)
        a.legend(fontsize=8)
        panel = 1
    a = ax[0][panel]
    copy = {}
    points = []
    for spec in args.model:
        label, rest = spec.split("=", 1)
        minutes, report = rest.split(":", 1)
        points.append((label, float(minutes), json.loads(Path(report).read_text())))
    span = max([m for _, m, _ in points] + [1.0])
    for n, (label, minutes, r) in enumerate(points):
        for k, f in enumerate(FACTORS):
            a.scatter([minutes + 0.012 * span * (k - 2)], [r["control"]["model"][f]["nerr"]], color=colours[f],
                      label=f if n == 0 else None)
            copy[f] = r["control"]["copy_source"][f]["nerr"]
        a.annotate(label, (minutes, 0.05 + 0.17 * n), ha="center", fontsize=8)
    a.set_xlim(0, span * 1.1)
    for f, v in copy.items():
        a.axhline(v, color=colours[f], ls="--", lw=0.8)
    a.set(title="whole chain (make demo, synthetic_long)", xlabel="training minutes (all stages)",
          ylabel="normalised control error")
    a.set_ylim(0, 3.5)
    if copy:
        a.legend(fontsize=8)
    fig.suptitle("dashed: copying the source; lower is better", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
