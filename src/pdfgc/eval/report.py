"""Report writers: JSON (strict: non-finite numbers become the strings "inf"/"-inf"/"nan"), markdown tables and
the leakage heatmap PNG (matplotlib, Agg backend)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pdfgc.fileio import atomic_write_text

METHOD_LABELS = {"model": "model", "copy_source": "copy source", "copy_driver": "copy driver",
                 "model_control_off": "model, control off", "estimator_on_driver": "estimator on driver"}


RELIABLE_R2 = 0.25  # estimator held-out R^2 below which a factor's numbers are flagged
# benchmark factor -> estimator regression output whose R^2 tells whether the factor is readable
_R2_KEY = {"mouth": "mouth", "pose": "pose", "gaze": "gaze", "blink": "eye_open", "emotion": "emotion_intensity"}


def estimator_r2(report: dict) -> dict:
    """Held-out R^2 of the estimator per benchmark factor ({} when unknown)."""
    r2 = (report.get("estimator", {}).get("held_out") or {}).get("r2", {})
    return {f: r2[k] for f, k in _R2_KEY.items() if k in r2}


def estimator_markdown(estimator: dict) -> list[str]:
    """Lines of the report's instrument section: the estimator's held-out accuracy per claimed factor against the
    issue-12 bars (factor, R^2 / accuracy, bar, met?)."""
    from pdfgc.eval.instrument import BARS

    held = estimator.get("held_out") or {}
    if not held:
        return []
    src = estimator.get("path") or "trained in this run"
    if "redrawn" in held:
        r, nat = held["redrawn"], held.get("natural") or {}
        head = (f"### Instrument: factor estimator ({src}), held-out test identities", "",
                f"Re-drawn factors ({r.get('num_frames')} frames; natural frames beside). Pose = yaw/pitch/roll, "
                "gaze over eyes at least half open, emotion over neutral frames or intensity >= 0.4.", "")
        rows = []
        parts = {"pose": r.get("pose_cols", [])[:3], "gaze": r.get("gaze_cols"), "mouth": r.get("mouth_cols")}
        for k, bar in BARS.items():
            v = _num(r.get(k))
            p = parts.get(k)
            detail = " / ".join(_fmt(x, 3) for x in p) if p else ""
            rows.append([k + (" (acc)" if k == "emotion_acc" else " (R^2)"), _fmt(v, 3), detail, _fmt(nat.get(k), 3),
                         f">= {bar}", "yes" if v is not None and v >= bar else "**no**"])
        lines = list(head) + [md_table(["factor", "held-out", "parts", "natural frames", "bar", "met"], rows), ""]
        bins = r.get("emotion_acc_bins") or {}
        if bins:
            lines += ["Emotion accuracy per intensity bin: " + ", ".join(
                f"{b}: {_fmt(v[0], 2)} (n={v[1]})" for b, v in bins.items()) + ".", ""]
        return lines
    # an estimator trained on the fly (older definitions: all frames, pose incl. translation)
    r2 = held.get("r2", {})
    rows = []
    for k, bar in BARS.items():
        v = _num(held.get("emotion_acc") if k == "emotion_acc" else r2.get(k))
        rows.append([k, _fmt(v, 3), f">= {bar}", "yes" if v is not None and v >= bar else "**no**"])
    return [f"### Instrument: factor estimator ({src}), held-out test identities", "",
            "Trained in this run (no shipped estimator for this size); all held-out frames, pose R^2 over all six "
            "pose outputs.", "", md_table(["factor", "held-out", "bar", "met"], rows), ""]


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, np.integer):
        return int(x)
    return x


_atomic_text = atomic_write_text


def write_json(obj: dict, path) -> Path:
    """Write `obj` as strict JSON (see module docstring) atomically."""
    path = Path(path)
    _atomic_text(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")
    return path


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def md_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table from a header and rows of cells (floats formatted to 3 decimals)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c) for c in r) + " |")
    return "\n".join(lines)


def synthetic_markdown(report: dict) -> str:
    """Markdown summary of a synthetic-benchmark report."""
    factors = report["factors"]
    ctrl = report["control"]
    cols = ["model", "model_control_off", "copy_source", "copy_driver", "estimator_on_driver"]
    cfg = report["config"]
    out = [f"## Synthetic disentanglement benchmark ({cfg['clips']} samples x {cfg['frames']} frames, "
           f"{cfg['image_size']} px, test identities)", "",
           "Control error per factor: normalised error (0 = follows the driver exactly, ~1 = chance), raw error "
           "in brackets. Lower is better.", ""]
    r2 = estimator_r2(report)
    rows = []
    for f in factors:
        row = [f"{f} ({report['units'][f]})"]
        for c in cols:
            e = ctrl[c][f]
            row.append(f"{_fmt(e['nerr'], 2)} ({_fmt(e['err'], 3)})")
        row.append(_fmt(r2.get(f), 2) + ("" if r2.get(f, 1.0) >= RELIABLE_R2 else " (unreliable)"))
        rows.append(row)
    acc = report["emotion_acc"]
    rows.append(["emotion class accuracy"] + [_fmt(acc.get(c), 2) for c in cols]
                + [_fmt((report.get("estimator", {}).get("held_out") or {}).get("emotion_acc"), 2)])
    out.append(md_table(["factor"] + [METHOD_LABELS[c] for c in cols] + ["estimator R^2 (held-out)"], rows))
    out += ["", f"Factors whose estimator R^2 is below {RELIABLE_R2} cannot be read reliably from images of this size "
            "by the estimator: their control and leakage numbers are noise (train the estimator longer, "
            "`--estimator-steps`)."]
    out += ["", "Leakage (row: only this factor's driver changes; column: how much each factor moves in the output, "
            "in units of how much it moves between the two real driver frames). Ideal: 1 on the diagonal, 0 "
            "elsewhere; copying the changed driver scores 1 across its row.", ""]
    for m, mat in report["leakage"].items():
        s = report["leakage_summary"][m]
        out += [f"**{METHOD_LABELS.get(m, m)}** (response {_fmt(s['response'], 2)}, "
                f"leakage {_fmt(s['leakage'], 2)})", ""]
        out.append(md_table(["driver changed \\ factor"] + factors,
                            [[f] + [_fmt(v, 2) for v in row] for f, row in zip(factors, mat)]))
        out.append("")
    img = report.get("image_vs_target", {})
    if img:
        keys = sorted({k for v in img.values() for k in v})
        out += ["Image quality against the ground-truth render (source identity with the driver's factors):", ""]
        out.append(md_table(["method"] + keys, [[METHOD_LABELS.get(m, m)] + [v.get(k) for k in keys]
                                               for m, v in img.items()]))
        out.append("")
    out += estimator_markdown(report.get("estimator", {}))
    est = report.get("estimator", {}).get("held_out") or {}
    if est and "redrawn" not in est:
        out += ["Factor estimator, held-out test identities: "
                f"pose {_fmt(est.get('pose_deg_mae'), 2)} deg MAE, gaze {_fmt(est.get('gaze_mae'))}, "
                f"eye_open {_fmt(est.get('eye_open_mae'))}, mouth {_fmt(est.get('mouth_mae'))}, "
                f"emotion accuracy {_fmt(est.get('emotion_acc'), 2)}, "
                f"R^2 {', '.join(f'{k} {_fmt(v, 2)}' for k, v in est.get('r2', {}).items())}.", ""]
    t = report.get("timing", {})
    if t:
        out.append(f"Run time {_fmt(t.get('total_s'), 1)} s ({t.get('generated_frames')} generated frames).")
    return "\n".join(out) + "\n"


def leakage_heatmap(report: dict, path) -> Path:
    """Save one heatmap per method of the leakage matrices (rows: driver changed, columns: factor moved)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    factors = report["factors"]
    mats = report["leakage"]
    fig, axes = plt.subplots(1, len(mats), figsize=(3.4 * len(mats) + 1.0, 3.8), squeeze=False)
    fig.subplots_adjust(wspace=0.08)
    for k, (ax, (m, mat)) in enumerate(zip(axes[0], mats.items())):
        a = np.asarray(mat, dtype=float)
        im = ax.imshow(a, vmin=0.0, vmax=max(1.0, float(np.nanmax(a)) if a.size else 1.0), cmap="magma")
        ax.set_xticks(range(len(factors)), factors, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(factors)), factors if k == 0 else [], fontsize=8)
        ax.set_xlabel("factor moved", fontsize=8)
        if k == 0:
            ax.set_ylabel("driver changed", fontsize=8)
        ax.set_title(METHOD_LABELS.get(m, m), fontsize=9)
        for r in range(a.shape[0]):
            for c in range(a.shape[1]):
                ax.text(c, r, f"{a[r, c]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if a[r, c] > 0.6 * im.get_clim()[1] else "white")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_synthetic_report(report: dict, out_dir) -> dict:
    """Write `report.json`, `report.md` and `leakage.png` into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    files = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md"),
             "heatmap": str(out_dir / "leakage.png")}
    report = dict(report, files=files)
    leakage_heatmap(report, files["heatmap"])
    _atomic_text(Path(files["markdown"]), synthetic_markdown(report))
    write_json(report, files["json"])
    return files


def videos_markdown(report: dict) -> str:
    """Markdown summary of a `videos` report: mean of each metric and one row per video."""
    names = report["metrics"]
    out = [f"## Video evaluation ({report['num_videos']} videos)", "",
           md_table(["metric", "mean"], [[k, report["mean"].get(k)] for k in names]), "",
           md_table(["video"] + names, [[v["name"]] + [v.get(k) for k in names] for v in report["videos"]])]
    return "\n".join(out) + "\n"
