"""Run the preprocessing over a folder: discovery, deterministic sharding, resume, workers, progress, report."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pdfgc.data import clipstore
from pdfgc.data.video import VIDEO_EXTENSIONS
from pdfgc.errors import UserError

from .clip import ClipOptions, process_clip

_ID_RE = re.compile(r"^id\d+$")


class PreprocessError(UserError, ValueError):
    """A problem with the run's arguments or input folder (the command line reports it in one line, exit 2)."""


@dataclass(frozen=True)
class ClipTask:
    key: str  # input-relative path without extension, '/'-separated: unique clip id and output path
    identity: str
    src: str  # absolute path


def identity_of(rel: Path) -> str:
    """Identity label of an input-relative clip path: the first folder named like a VoxCeleb id (`id00012`), else the
    first folder, else (a flat folder of videos) the file's stem."""
    parts = rel.parts[:-1]
    for p in parts:
        if _ID_RE.match(p):
            return p
    return parts[0] if parts else rel.stem


def discover(input_dir) -> list[ClipTask]:
    """Every video file under `input_dir` (recursively; extensions of pdfgc.data.video), sorted by key.

    Symbolic links are followed (an input tree may link into a data store), but each real folder is entered once
    (a link cycle, or two links to one folder, is walked once) and each real file is taken once (under the first
    name the sorted walk meets), so no clip is processed twice.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise PreprocessError(f"--input {root}: not a folder; pass the VoxCeleb2 root (id*/video_id/*.mp4) or any "
                                "folder of videos")
    tasks = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen_dirs:  # reached again through a link: already walked (or a cycle)
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.startswith(".") or Path(fn).suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            p = Path(dirpath) / fn
            try:
                fst = p.stat()
            except OSError:  # a dangling link
                continue
            rel = p.relative_to(root)
            key = rel.with_suffix("").as_posix()
            ident = (fst.st_dev, fst.st_ino)
            if ident in seen_files:  # the same file under another name (a link): once is enough
                continue
            seen_files[ident] = key
            tasks.append(ClipTask(key, identity_of(rel), str(p)))
    tasks.sort(key=lambda t: t.key)
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        dup = sorted(k for k, c in Counter(keys).items() if c > 1)[:5]
        raise PreprocessError(f"--input {root}: several videos share a name up to the extension ({dup}); rename them")
    return tasks


def shard_of(key: str, num_shards: int) -> int:
    """Deterministic machine shard of a clip: a hash of its key (stable when other files are added or removed)."""
    h = hashlib.md5(key.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") % num_shards


def is_test_identity(identity: str, test_fraction: float) -> bool:
    """Deterministic identity split by hash (stable across machines and dataset growth)."""
    h = hashlib.blake2b(f"pdfgc-split:{identity}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0 ** 64 < test_fraction


# ------------------------------------------------------------------------------------------------------------
# claims: runs sharing an output folder (two terminals, or machines of a sharded run given the same shard) process
# each clip once. A run claims a clip by creating `claims/<key>.claim` with O_EXCL (atomic, also on NFS v3+) holding
# "<host> <pid>" of the run; the claim is released once the clip's record is in the manifest. A claim of a process
# that is gone (same host, pid not alive), or older than STALE_CLAIM_S from another host, is taken over.

CLAIMS_DIR = "claims"
STALE_CLAIM_S = 24 * 3600.0


def claim_path(out_dir, key: str) -> Path:
    return Path(out_dir) / CLAIMS_DIR / f"{key}.claim"


def _owner() -> str:
    import socket

    return f"{socket.gethostname()} {_WORKER_ARGS.get('owner_pid', os.getpid())}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_stale(path: Path, owner: str, stale_s: float) -> bool:
    import socket

    try:
        host, pid = path.read_text().split()
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):  # unreadable or half-written: stale only when old
        try:
            return time.time() - path.stat().st_mtime > 60.0
        except OSError:
            return True  # gone meanwhile: try again
    if f"{host} {pid}" == owner:
        return True  # our own (a worker of this run that died with the clip in flight)
    if host == socket.gethostname():
        return not _pid_alive(int(pid))
    return age > stale_s


def claim(out_dir, key: str, stale_s: float = STALE_CLAIM_S) -> bool:
    """Claim clip `key` for this run; False when another live run holds it. Stale claims are taken over."""
    path = claim_path(out_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _is_stale(path, owner, stale_s):
                return False
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        return True
    return False


def release(out_dir, key: str) -> None:
    try:
        claim_path(out_dir, key).unlink()
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------------------------------------------------
# workers: one landmark backend per process, built once

_BACKEND = None
_WORKER_ARGS: dict = {}


def _make_backend(opts: ClipOptions, backend_kwargs: dict):
    from pdfgc.data.landmarks import get_backend

    return get_backend(opts.backend, **backend_kwargs)


def _init_worker(opts: ClipOptions, backend_kwargs: dict, out_dir: str, input_dir: str,
                 owner_pid: int | None = None) -> None:
    global _BACKEND
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per worker: parallelism comes from processes
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:
        pass
    if "torch" in sys.modules:  # only the face_alignment backend needs torch: do not import it for dlib
        sys.modules["torch"].set_num_threads(1)
    _WORKER_ARGS.update(opts=opts, out_dir=out_dir, input_dir=input_dir,
                        owner_pid=os.getpid() if owner_pid is None else owner_pid)
    _BACKEND = _make_backend(opts, backend_kwargs)


def _work(task: ClipTask) -> dict:
    a = _WORKER_ARGS
    if os.environ.get("PDFGC_PREPROCESS_CRASH_KEY") == task.key:  # test aid: simulate a native crash / OOM kill
        os._exit(70)
    if not claim(a["out_dir"], task.key):
        return {"key": task.key, "claimed_elsewhere": True}
    if clipstore.clip_path(a["out_dir"], task.key).is_file():
        # another run finished it after this run listed its pending clips
        release(a["out_dir"], task.key)
        return {"key": task.key, "claimed_elsewhere": True}
    rel = os.path.relpath(task.src, a["input_dir"])
    return process_clip(task.src, task.key, task.identity, a["out_dir"], _BACKEND, a["opts"], rel_src=rel)


def _run_parallel(cfg, todo: list[ClipTask], out: str, input_dir: str, consume) -> None:
    """Process `todo` in `cfg.workers` spawned processes, at most 2 clips in flight per worker.

    A worker that dies (segfault in a native library, out-of-memory kill) breaks the pool. The clips that were in
    flight are then re-run one at a time in a one-process pool, so that only the clip that really kills its worker is
    recorded as failed ("worker_crashed", retried by --retry-failed); a fresh pool continues with the rest.
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # no forked torch/dlib state; same behaviour on every OS
    initargs = (cfg.opts, cfg.backend_kwargs, out, input_dir, os.getpid())
    queue = list(reversed(todo))
    suspects: list[ClipTask] = []
    while queue or suspects:
        if suspects:
            t = suspects.pop()
            ex = ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker, initargs=initargs)
            try:
                consume(ex.submit(_work, t).result())
            except BrokenProcessPool as e:
                consume({"key": t.key, "identity": t.identity, "src": os.path.relpath(t.src, input_dir),
                         "backend": cfg.opts.backend, "status": "failed", "reason": "worker_crashed",
                         "detail": f"the worker process died on this clip ({e}); it may be too long for the "
                                   "memory (see --max-frames) or crash a native library"})
            finally:
                ex.shutdown(wait=True, cancel_futures=True)
            continue
        ex = ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=initargs)
        inflight: dict = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < 2 * cfg.workers:
                    t = queue.pop()
                    inflight[ex.submit(_work, t)] = t
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    rec = fut.result()  # BrokenProcessPool surfaces here (the clip stays in `inflight`)
                    inflight.pop(fut)
                    consume(rec)
        except BrokenProcessPool:
            suspects.extend(sorted(inflight.values(), key=lambda t: t.key, reverse=True))
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------------------

@dataclass
class RunConfig:
    input: str
    output: str
    workers: int = 1
    shard: int = 0
    num_shards: int = 1
    retry_failed: bool = False
    limit: int = 0  # process at most this many pending clips (0 = all)
    test_fraction: float = 0.02
    split_file: str | None = None  # identities of the test split, one per line (overrides test_fraction)
    progress: bool = True
    opts: ClipOptions = field(default_factory=ClipOptions)
    backend_kwargs: dict = field(default_factory=dict)


def pending_tasks(tasks: list[ClipTask], out_dir, retry_failed: bool) -> tuple[list[ClipTask], int]:
    """Tasks not finished yet: no record, or (with retry_failed) a failed/skipped record, or an ok record whose file
    is gone. Returns (pending, number already finished)."""
    recs = clipstore.read_records(out_dir)
    todo, done = [], 0
    for t in tasks:
        r = recs.get(t.key)
        if r is None:
            todo.append(t)
        elif r.get("status") == "ok":
            if clipstore.clip_path(out_dir, t.key).is_file():
                done += 1
            else:
                todo.append(t)
        elif retry_failed:
            todo.append(t)
        else:
            done += 1
    return todo, done


STALE_TEMP_S = 3600.0  # temp files older than this are leftovers of a killed run (never in flight)


def _cleanup_temp(out_dir: Path, older_than_s: float = STALE_TEMP_S) -> int:
    # temp files of clips that were in flight when a previous run was killed. Only old ones: other machines of a
    # sharded run may be writing into the same folder right now.
    n = 0
    clips = out_dir / clipstore.CLIPS_DIR
    now = time.time()
    if clips.is_dir():
        for p in clips.rglob(".tmp_*"):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    p.unlink()
                    n += 1
            except OSError:
                pass
    return n


def run(cfg: RunConfig) -> dict:
    """Preprocess every pending clip of this machine shard, then merge manifests; returns the report dict."""
    if not 0 <= cfg.shard < cfg.num_shards:
        raise PreprocessError(f"--shard {cfg.shard} must lie in [0, --num-shards {cfg.num_shards})")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    _cleanup_temp(out)
    part = out / clipstore.MANIFEST_DIR / clipstore.part_name(cfg.shard, cfg.num_shards)
    clipstore.repair_jsonl(part)  # a run killed mid-write leaves a torn last line
    all_tasks = discover(cfg.input)
    mine = [t for t in all_tasks if shard_of(t.key, cfg.num_shards) == cfg.shard]
    todo, already = pending_tasks(mine, out, cfg.retry_failed)
    if cfg.limit:
        todo = todo[:cfg.limit]
    print(f"[preprocess] {len(all_tasks)} clips under {cfg.input}; shard {cfg.shard}/{cfg.num_shards}: {len(mine)}; "
          f"already finished {already}; to do {len(todo)}; workers {cfg.workers}; backend {cfg.opts.backend}",
          file=sys.stderr)
    counts: Counter = Counter()
    reasons: Counter = Counter()
    t0 = time.perf_counter()
    frames = 0
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="clip", disable=not cfg.progress, dynamic_ncols=True, smoothing=0.05)

    def consume(rec: dict) -> None:
        nonlocal frames
        if rec.get("claimed_elsewhere"):  # another run holds or finished it
            counts["claimed_elsewhere"] += 1
            bar.update(1)
            return
        clipstore.append_record(part, rec)
        release(out, rec["key"])
        counts[rec["status"]] += 1
        if rec["status"] != "ok":
            reasons[f"{rec['status']}:{rec['reason']}"] += 1
        frames += rec.get("num_frames", 0) if rec["status"] == "ok" else 0
        bar.update(1)
        el = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(ok=counts["ok"], skip=counts["skipped"], fail=counts["failed"], fps=f"{frames / el:.1f}")

    input_dir = str(Path(cfg.input).resolve())
    try:
        if cfg.workers <= 1 or len(todo) <= 1:
            _init_worker(cfg.opts, cfg.backend_kwargs, str(out), input_dir) if todo else None
            for t in todo:
                consume(_work(t))
        else:
            _run_parallel(cfg, todo, str(out), input_dir, consume)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    report = finalize(out, cfg.test_fraction, cfg.split_file)
    processed = counts["ok"] + counts["skipped"] + counts["failed"]
    report["this_run"] = {"processed": processed, "ok": counts["ok"], "skipped": counts["skipped"],
                          "failed": counts["failed"], "reasons": dict(sorted(reasons.items())),
                          "claimed_elsewhere": counts["claimed_elsewhere"], "seconds": round(elapsed, 2),
                          "frames": frames,
                          "clips_per_s": round(processed / elapsed, 3) if elapsed > 0 else None,
                          "shard": cfg.shard, "num_shards": cfg.num_shards}
    clipstore.write_bytes(out / "report.json", json.dumps(report, indent=2, sort_keys=True).encode())
    print_report(report, file=sys.stderr)
    return report


def finalize(out_dir, test_fraction: float = 0.02, split_file: str | None = None) -> dict:
    """Merge the manifest parts into `manifest.jsonl` (sorted, latest record per clip, timing fields dropped) and
    write identity split lists `splits/{train,test}.txt`. Idempotent; safe to run while other shards still work."""
    out = Path(out_dir)
    recs = clipstore.read_records(out)
    clipstore.write_jsonl(out / clipstore.MANIFEST, [{kk: v for kk, v in recs[k].items()
                                                      if kk not in ("time_s", "traceback")} for k in sorted(recs)])
    ids = sorted({r["identity"] for r in recs.values() if r.get("status") == "ok"})
    if split_file:
        test_ids = set(clipstore.read_split(split_file))
    else:
        test_ids = {i for i in ids if is_test_identity(i, test_fraction)}
    clipstore.write_lines(clipstore.split_path(out, "train"), [i for i in ids if i not in test_ids])
    clipstore.write_lines(clipstore.split_path(out, "test"), [i for i in ids if i in test_ids])
    status = Counter(r.get("status") for r in recs.values())
    reasons = Counter(f"{r.get('status')}:{r.get('reason')}" for r in recs.values() if r.get("status") != "ok")
    return {"total": {"clips": len(recs), "ok": status["ok"], "skipped": status["skipped"],
                      "failed": status["failed"], "reasons": dict(sorted(reasons.items())),
                      "identities": len(ids), "test_identities": len([i for i in ids if i in test_ids]),
                      "frames": sum(r.get("num_frames", 0) for r in recs.values() if r.get("status") == "ok")}}


def print_report(report: dict, file=sys.stderr) -> None:
    tr, tot = report.get("this_run", {}), report["total"]
    if tr:
        print(f"[preprocess] this run: {tr['processed']} clips in {tr['seconds']} s "
              f"({tr['clips_per_s']} clips/s, {tr['frames']} frames): ok {tr['ok']}, skipped {tr['skipped']}, "
              f"failed {tr['failed']}" + (f"; {tr['claimed_elsewhere']} left to another run working on the same "
                                         "output" if tr.get("claimed_elsewhere") else ""), file=file)
    print(f"[preprocess] output total: {tot['clips']} clips: ok {tot['ok']}, skipped {tot['skipped']}, failed "
          f"{tot['failed']}; {tot['identities']} identities ({tot['test_identities']} in test); "
          f"{tot['frames']} frames", file=file)
    for r, c in tot["reasons"].items():
        print(f"[preprocess]   {r}: {c}", file=file)
