"""Pack the per-clip files of a preprocessed folder into tar shards: `python -m preprocess.pack --output DIR`.

A million small files are slow on network file systems and object stores; a few thousand ~1 GB tars are not.
Clips with status ok are taken in key order (so a shard holds few identities) and written, uncompressed, as
`shards/shard-SSSSS.tar` with members `<key>.npz`, together with `shards/shard-SSSSS.idx.jsonl` (key, byte offset
and size of each member's data). `shards/index.jsonl` concatenates them. `pdfgc.data.vox2.Vox2Source` reads a clip
from its tar by offset when the per-clip file is absent, so `--remove-clips` may delete the loose files afterwards.

Deterministic (fixed member metadata) and resumable (a shard whose index exists is kept; tars are written to a
temporary name and renamed).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

from . import store

SHARDS_DIR = "shards"


def _tar_bytes(members: list[tuple[str, bytes]]) -> tuple[bytes, list[tuple[str, int, int]]]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    # data offsets as a reader sees them (long names add extra header blocks, so read them back, do not guess)
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r") as tf:
        where = [(m.name, m.offset_data, m.size) for m in tf.getmembers()]
    return buf.getvalue(), where


def pack(out_dir, clips_per_shard: int = 1000, remove_clips: bool = False) -> dict:
    """Pack the ok clips of `out_dir` into tar shards (see module docstring). Returns counts."""
    out = Path(out_dir)
    recs = [r for r in store.load_manifest(out) if r.get("status") == "ok"]
    if not recs:
        raise ValueError(f"{out}: no ok clip in the manifest; run `python -m preprocess` first")
    sdir = out / SHARDS_DIR
    sdir.mkdir(parents=True, exist_ok=True)
    written = kept = 0
    groups = [recs[i:i + clips_per_shard] for i in range(0, len(recs), clips_per_shard)]
    for s, group in enumerate(groups):
        tar_path, idx_path = sdir / f"shard-{s:05d}.tar", sdir / f"shard-{s:05d}.idx.jsonl"
        keys = [r["key"] for r in group]
        if idx_path.is_file() and tar_path.is_file():
            if [r["key"] for r in store.read_jsonl(idx_path)] == keys:
                kept += 1
                continue
        members = []
        for r in group:
            p = store.clip_path(out, r["key"])
            if not p.is_file():
                raise FileNotFoundError(f"{p}: clip file missing (manifest says ok); rerun `python -m preprocess` "
                                        "on the same input to rebuild it, then pack again")
            members.append((f"{r['key']}.npz", p.read_bytes()))
        data, where = _tar_bytes(members)
        store.atomic_write_bytes(tar_path, data)
        lines = [json.dumps({"key": name[:-4], "shard": tar_path.name, "offset": off, "size": size}, sort_keys=True)
                 for name, off, size in where]
        store.atomic_write_bytes(idx_path, "".join(x + "\n" for x in lines).encode())
        written += 1
    # the index of the whole folder (shards beyond the current count are stale leftovers: dropped from the index)
    parts = [sdir / f"shard-{s:05d}.idx.jsonl" for s in range(len(groups))]
    store.atomic_write_bytes(sdir / "index.jsonl", b"".join(p.read_bytes() for p in parts))
    removed = 0
    if remove_clips:
        for r in recs:
            p = store.clip_path(out, r["key"])
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
    try:
        res = pack(args.output, args.clips_per_shard, args.remove_clips)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[pack] {res['clips']} clips in {res['shards']} shards ({res['written']} written, {res['kept']} kept); "
          f"{res['removed']} loose clip files removed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
