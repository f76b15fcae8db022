"""On-disk layout of preprocessed data: per-clip `.npz` files, jsonl manifests and identity split lists.

    OUT/
      clips/<key>.npz                one file per clip (key = the clip's input path without extension)
      manifest/part-IIIII-of-NNNNN.jsonl   append-only log of one machine shard (one json record per finished clip)
      manifest.jsonl                 merged, sorted, one record per clip (latest status), rewritten by `finalize`
      splits/train.txt, test.txt     identity names, one per line (split by identity)
      report.json                    counts by status and reason

Clip file (`.npz`, a zip of `.npy` members, written deterministically: fixed member order and timestamps, so the
same clip gives the same bytes on every run and machine):
    jpeg          uint8 (total,)       the T aligned frames, JPEG-encoded, concatenated
    jpeg_offsets  int64 (T+1,)         frame t = jpeg[jpeg_offsets[t]:jpeg_offsets[t+1]]
    audio         int16 (L,)           16 kHz mono PCM, L = T * 640 (trimmed to the video)
    mel           float32 (T_mel, 80)  reference mel features of `audio` (pdfgc.data.audio, SPEC 1.4)
    landmarks     float32 (T, 68, 2)   aligned-crop pixel coordinates
    landmarks_src float32 (T, 68, 2)   source-frame pixel coordinates (smoothed, gaps interpolated)
    found         bool (T,)            False where the face was not detected and landmarks were interpolated
    matrices      float32 (T, 2, 3)    source pixel -> aligned pixel affine maps
    pose          float32 (T, 6)       yaw, pitch, roll [rad], tx, ty, tz [face-size units] (preprocess.factors)
    ear           float32 (T, 2)       eye aspect ratios (image-left eye, image-right eye)
    eye_open      float32 (T, 2)       openness in [0, 1]
    mouth         float32 (T, 2)       inner-lip opening, mouth width (in eye-distance units)
    eye_box, mouth_box float32 (T, 4)  x0, y0, x1, y1 in [0, 1]
    meta          uint8 (n,)           utf-8 json: key, identity, source, fps, image_size, backend, version, ...

Writes are atomic (temporary name in the same folder, then `os.replace`), so a killed run never leaves a partial
clip file under its final name.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from pdfgc import fileio

FORMAT_VERSION = 1
MANIFEST_DIR = "manifest"
CLIPS_DIR = "clips"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def clip_path(out_dir, key: str) -> Path:
    """Where the clip `key` lives under the output folder."""
    return Path(out_dir) / CLIPS_DIR / f"{key}.npz"


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically, fsync'ed (a crash loses at most the clip in flight)."""
    fileio.atomic_write_bytes(path, data, fsync=True)


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Deterministic uncompressed npz bytes of `arrays` (members sorted by name, fixed timestamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def write_clip(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Atomically write one clip file (arrays + `meta` as utf-8 json)."""
    data = dict(arrays)
    data["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    atomic_write_bytes(path, encode_npz(data))


def read_meta(npz) -> dict:
    """The json metadata of an opened clip file (`np.load` result)."""
    return json.loads(bytes(npz["meta"]).decode())


def decode_jpeg_frames(jpeg: np.ndarray, offsets: np.ndarray, idx) -> np.ndarray:
    """Decode frames `idx` of a clip's JPEG array -> uint8 `(len(idx), S, S, 3)` RGB."""
    import cv2

    out = []
    for t in idx:
        t = int(t)
        if not 0 <= t < len(offsets) - 1:
            raise IndexError(f"frame {t} out of range [0, {len(offsets) - 1})")
        bgr = cv2.imdecode(jpeg[offsets[t]:offsets[t + 1]], cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"frame {t}: corrupt JPEG data")
        out.append(bgr[:, :, ::-1])
    return np.ascontiguousarray(np.stack(out))


def encode_jpeg_frames(frames: np.ndarray, quality: int = 95) -> tuple[np.ndarray, np.ndarray]:
    """JPEG-encode uint8 RGB frames `(T, S, S, 3)` -> (concatenated bytes uint8, offsets int64 (T+1,))."""
    import cv2

    blobs = []
    for f in frames:
        ok, enc = cv2.imencode(".jpg", np.ascontiguousarray(f[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        blobs.append(enc.ravel())
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.concatenate(blobs).astype(np.uint8), offsets


# ------------------------------------------------------------------------------------------------------------
# manifest

def part_name(shard: int, num_shards: int) -> str:
    return f"part-{shard:05d}-of-{num_shards:05d}.jsonl"


def append_record(path, record: dict) -> None:
    """Append one json line and fsync, so that a killed run keeps every record it reported."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def repair_jsonl(path) -> bool:
    """Cut a torn last line (no trailing newline: the writer was killed mid-write) so that the next appended record
    starts on its own line. Returns True if something was cut."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "r+b") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())
    return True


def read_jsonl(path) -> list[dict]:
    """Records of a jsonl file; a truncated last line (killed writer) is ignored."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def read_records(out_dir) -> dict[str, dict]:
    """Latest record per clip key over every manifest part under `out_dir` (later lines win)."""
    recs: dict[str, dict] = {}
    mdir = Path(out_dir) / MANIFEST_DIR
    if not mdir.is_dir():
        return recs
    for part in sorted(mdir.glob("part-*.jsonl")):
        for r in read_jsonl(part):
            if "key" in r:
                recs[r["key"]] = r
    return recs


def load_manifest(out_dir) -> list[dict]:
    """Records of `OUT/manifest.jsonl` if present, else merged from the parts; sorted by key."""
    path = Path(out_dir) / "manifest.jsonl"
    recs = read_jsonl(path) if path.is_file() else list(read_records(out_dir).values())
    return sorted(recs, key=lambda r: r["key"])


def read_split(path) -> list[str]:
    """Identity names of a split list: one per line, `#` starts a comment, blank lines ignored."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def write_lines(path, lines) -> None:
    atomic_write_bytes(path, "".join(f"{x}\n" for x in lines).encode())
