"""Pack the per-clip files of a preprocessed folder into tar shards: `python -m preprocess.pack --output DIR`.

A million small files are slow on network file systems and object stores; a few thousand ~1 GB tars are not.
Clips with status ok are taken in key order (so a shard holds few identities) and written, uncompressed, as
`shards/shard-SSSSS.tar` with members `<key>.npz`, together with `shards/shard-SSSSS.idx.jsonl` (key, byte offset
and size of each member's data). `shards/index.jsonl` concatenates them. `pdfgc.data.vox2.Vox2Source` reads a clip
from its tar by offset when the per-clip file is absent, so `--remove-clips` may delete the loose files afterwards.

The layout and the tar members' metadata are `pdfgc.data.clipstore`'s (the one owner of the format).
Deterministic (fixed member metadata) and resumable (a shard whose index exists is kept; tars are written to a
temporary name and renamed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdfgc.data import clipstore
from pdfgc.errors import UserError, report_user_errors


class PackError(UserError, ValueError):
    """Nothing to pack, or a clip file the manifest promises is missing."""


def pack(out_dir, clips_per_shard: int = 1000, remove_clips: bool = False) -> dict:
    """Pack the ok clips of `out_dir` into tar shards (see module docstring; the format is
    `pdfgc.data.clipstore`'s). Returns counts."""
    out = Path(out_dir)
    recs = [r for r in clipstore.load_manifest(out) if r.get("status") == "ok"]
    if not recs:
        raise PackError(f"{out}: no ok clip in the manifest; run `python -m preprocess` first")
    sdir = out / clipstore.SHARDS_DIR
    sdir.mkdir(parents=True, exist_ok=True)
    written = kept = 0
    groups = [recs[i:i + clips_per_shard] for i in range(0, len(recs), clips_per_shard)]
    for s, group in enumerate(groups):
        tar_path, idx_path = sdir / clipstore.shard_name(s), sdir / clipstore.shard_index_name(s)
        keys = [r["key"] for r in group]
        if idx_path.is_file() and tar_path.is_file():
            if [r["key"] for r in clipstore.read_jsonl(idx_path)] == keys:
                kept += 1
                continue
        members = []
        for r in group:
            p = clipstore.clip_path(out, r["key"])
            if not p.is_file():
                raise PackError(f"{p}: clip file missing (manifest says ok); rerun `python -m preprocess` on the "
                                "same input to rebuild it, then pack again")
            members.append((f"{r['key']}.npz", p.read_bytes()))
        data, where = clipstore.tar_bytes(members)
        clipstore.write_bytes(tar_path, data)
        clipstore.write_jsonl(idx_path, clipstore.shard_index_records(tar_path.name, where))
        written += 1
    # the index of the whole folder (shards beyond the current count are stale leftovers: dropped from the index)
    parts = [sdir / clipstore.shard_index_name(s) for s in range(len(groups))]
    clipstore.write_bytes(sdir / clipstore.SHARD_INDEX, b"".join(p.read_bytes() for p in parts))
    removed = 0
    if remove_clips:
        for r in recs:
            p = clipstore.clip_path(out, r["key"])
            if p.is_file():
                p.unlink()
                removed += 1
    return {"clips": len(recs), "shards": len(groups), "written": written, "kept": kept, "removed": removed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m preprocess.pack", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, help="the preprocessing output folder")
    ap.add_argument("--clips-per-shard", type=int, default=1000, help="clips per tar (1000 x ~8 s ~ 3.5 GB)")
    ap.add_argument("--remove-clips", action="store_true", help="delete the per-clip files once packed")
    args = ap.parse_args(argv)
    with report_user_errors("preprocess.pack"):
        res = pack(args.output, args.clips_per_shard, args.remove_clips)
    print(f"[pack] {res['clips']} clips in {res['shards']} shards ({res['written']} written, {res['kept']} kept); "
          f"{res['removed']} loose clip files removed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
