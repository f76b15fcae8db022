"""The preprocessed-clip format: its one owner. `python -m preprocess` writes it and `Vox2Source` (`data=vox2`) reads
it, both through this module only (field names, dtypes, folder layout, manifest, split lists, tar shards).

    OUT/
      clips/<key>.npz                      one file per clip (key = the clip's input path without extension)
      manifest/part-IIIII-of-NNNNN.jsonl   append-only log of one machine shard (one json record per finished clip)
      manifest.jsonl                       merged, sorted, one record per clip (latest status), rewritten by finalize
      splits/train.txt, test.txt           identity names, one per line (split by identity)
      shards/shard-SSSSS.tar               optional: ok clips packed in key order (`python -m preprocess.pack`),
      shards/shard-SSSSS.idx.jsonl         with the byte offset and size of each member's data;
      shards/index.jsonl                   all shard indexes concatenated (read when a clip file is absent)

Clip file (`.npz`, a zip of `.npy` members, written deterministically: members sorted by name, fixed timestamps and
permissions, no compression, so the same arrays give the same bytes on every run and machine). T frames at 25 fps:

    field          dtype    shape           meaning
    jpeg           uint8    (total,)        the T aligned frames, JPEG-encoded (RGB), concatenated
    jpeg_offsets   int64    (T+1,)          frame t = jpeg[jpeg_offsets[t]:jpeg_offsets[t+1]]
    audio          int16    (T*640,)        16 kHz mono PCM (`pcm16`), trimmed to the video
    mel            float32  (T_mel, 80)     reference mel features of `audio` (pdfgc.data.audio, SPEC 1.4)
    landmarks      float32  (T, 68, 2)      aligned-crop pixel coordinates
    landmarks_src  float32  (T, 68, 2)      source-frame pixel coordinates (smoothed, gaps interpolated)
    found          bool     (T,)            False where the face was not detected and landmarks were interpolated
    matrices       float32  (T, 2, 3)       source pixel -> aligned pixel affine maps
    pose           float32  (T, 6)          yaw, pitch, roll [rad], tx, ty, tz [face-size units]
    ear            float32  (T, 2)          eye aspect ratios (image-left eye, image-right eye)
    eye_open       float32  (T, 2)          openness in [0, 1]
    mouth          float32  (T, 2)          inner-lip opening, mouth width (in eye-distance units)
    eye_box        float32  (T, 4)          x0, y0, x1, y1 in [0, 1] (both eyes)
    mouth_box      float32  (T, 4)          x0, y0, x1, y1 in [0, 1]
    meta           uint8    (n,)            utf-8 json (sorted keys): key, identity, image_size, version, ...

`jpeg`, `jpeg_offsets` and `mel` are required; the other arrays may be absent (a reader then reports the factor as
unknown). Writes are atomic and fsync'ed (temporary name in the same folder, then `os.replace`), so a killed run never
leaves a partial file under its final name.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pdfgc import fileio
from pdfgc.errors import UserError

FORMAT_VERSION = 1  # meta["version"] of the clip files written here; readers accept <= this
CLIPS_DIR = "clips"
MANIFEST_DIR = "manifest"
MANIFEST = "manifest.jsonl"
SPLITS_DIR = "splits"
SHARDS_DIR = "shards"
SHARD_INDEX = "index.jsonl"

# field -> dtype of every array a clip file may hold (see the table above)
FIELDS: dict[str, np.dtype] = {name: np.dtype(dt) for name, dt in (
    ("jpeg", "uint8"), ("jpeg_offsets", "int64"), ("audio", "int16"), ("mel", "float32"),
    ("landmarks", "float32"), ("landmarks_src", "float32"), ("found", "bool"), ("matrices", "float32"),
    ("pose", "float32"), ("ear", "float32"), ("eye_open", "float32"), ("mouth", "float32"),
    ("eye_box", "float32"), ("mouth_box", "float32"))}
REQUIRED = ("jpeg", "jpeg_offsets", "mel")
FACTOR_FIELDS = ("pose", "eye_open", "mouth", "eye_box", "mouth_box")  # per-frame factors served by Vox2Source
PCM_SCALE = 32767.0  # int16 full scale of the stored audio
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ClipFormatError(UserError, ValueError):
    """A clip file or array that does not follow this format (wrong dtype, unknown field, corrupt data)."""


# ------------------------------------------------------------------------------------------------------------
# paths

def clip_path(root, key: str) -> Path:
    """Where the clip `key` lives under the output folder `root`."""
    return Path(root) / CLIPS_DIR / f"{key}.npz"


def clip_relpath(key: str) -> str:
    """The clip's path relative to the output folder (the manifest's `path`)."""
    return f"{CLIPS_DIR}/{key}.npz"


def part_name(shard: int, num_shards: int) -> str:
    """File name of machine shard `shard`'s manifest part."""
    return f"part-{shard:05d}-of-{num_shards:05d}.jsonl"


def split_path(root, split: str) -> Path:
    return Path(root) / SPLITS_DIR / f"{split}.txt"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tar"


def shard_index_name(index: int) -> str:
    return f"shard-{index:05d}.idx.jsonl"


def write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically, fsync'ed (a crash loses at most the file in flight)."""
    fileio.atomic_write_bytes(path, data, fsync=True)


# ------------------------------------------------------------------------------------------------------------
# clip files

def check_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Raise `ClipFormatError` unless every array is a known field with its dtype and the required ones exist."""
    unknown = sorted(set(arrays) - set(FIELDS))
    if unknown:
        raise ClipFormatError(f"clip arrays: unknown field(s) {unknown}; the format's fields are {list(FIELDS)}")
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise ClipFormatError(f"clip arrays: missing required field(s) {missing}")
    for name, a in arrays.items():
        if np.asarray(a).dtype != FIELDS[name]:
            raise ClipFormatError(f"clip field {name}: expected dtype {FIELDS[name]}, got {np.asarray(a).dtype}")


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


def encode_clip(arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    """The bytes of one clip file: `arrays` (checked against FIELDS) plus `meta` as utf-8 json (sorted keys)."""
    check_arrays(arrays)
    data = dict(arrays)
    data["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return encode_npz(data)


def write_clip(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Atomically write one clip file (see `encode_clip`)."""
    write_bytes(path, encode_clip(arrays, meta))


def read_clip(source) -> dict:
    """Every array of a clip file (a path, bytes or a binary file object) plus `meta` as a dict.

    Raises OSError when the file cannot be read and `ClipFormatError` when it is not a clip of this format (or of a
    newer version)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with np.load(source, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ClipFormatError(f"not a readable clip file ({e})") from e
    if "meta" not in data:
        raise ClipFormatError("clip file holds no `meta` member")
    try:
        data["meta"] = json.loads(bytes(data["meta"]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipFormatError(f"clip file: corrupt `meta` ({e})") from e
    version = int(data["meta"].get("version", 1))
    if version > FORMAT_VERSION:
        raise ClipFormatError(f"clip file format version {version} is newer than this pdfgc reads "
                              f"({FORMAT_VERSION}); update pdfgc")
    return data


def encode_jpeg_frames(frames: np.ndarray, quality: int = 95) -> tuple[np.ndarray, np.ndarray]:
    """JPEG-encode uint8 RGB frames `(T, S, S, 3)` -> (`jpeg` uint8 concatenated bytes, `jpeg_offsets` int64 (T+1,))."""
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


def decode_jpeg_frames(jpeg: np.ndarray, offsets: np.ndarray, idx: Iterable[int], size: int | None = None
                       ) -> np.ndarray:
    """Decode frames `idx` of a clip's `jpeg` / `jpeg_offsets` -> uint8 `(len(idx), S, S, 3)` RGB; with `size`,
    frames of another size are resized to `size` (area when shrinking, bilinear when enlarging)."""
    import cv2

    idx = [int(t) for t in idx]
    out = None
    for j, t in enumerate(idx):
        if not 0 <= t < len(offsets) - 1:
            raise IndexError(f"frame {t} out of range [0, {len(offsets) - 1})")
        bgr = cv2.imdecode(jpeg[offsets[t]:offsets[t + 1]], cv2.IMREAD_COLOR)
        if bgr is None:
            raise ClipFormatError(f"frame {t}: corrupt JPEG data")
        if size is not None and bgr.shape[0] != size:
            bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA if bgr.shape[0] > size
                             else cv2.INTER_LINEAR)
        if out is None:
            out = np.empty((len(idx),) + bgr.shape, np.uint8)
        out[j] = bgr[:, :, ::-1]
    if out is None:
        s = 0 if size is None else size
        out = np.empty((0, s, s, 3), np.uint8)
    return out


def pcm16(wav: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> the stored int16 PCM (clipped, rounded)."""
    return np.round(np.clip(wav, -1.0, 1.0) * PCM_SCALE).astype(np.int16)


def from_pcm16(audio: np.ndarray) -> np.ndarray:
    """The stored int16 PCM -> float32 samples in [-1, 1]."""
    return audio.astype(np.float32) / PCM_SCALE


# ------------------------------------------------------------------------------------------------------------
# manifest and split lists

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


def write_jsonl(path, records: Sequence[dict]) -> None:
    """Atomically write `records` as json lines (sorted keys)."""
    write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def manifest_parts(root) -> list[Path]:
    return sorted((Path(root) / MANIFEST_DIR).glob("part-*.jsonl"))


def read_records(root) -> dict[str, dict]:
    """Latest record per clip key over every manifest part under `root` (later lines win)."""
    recs: dict[str, dict] = {}
    for part in manifest_parts(root):
        for r in read_jsonl(part):
            if "key" in r:
                recs[r["key"]] = r
    return recs


def has_manifest(root) -> bool:
    return (Path(root) / MANIFEST).is_file() or bool(manifest_parts(root))


def load_manifest(root) -> list[dict]:
    """Records of `root/manifest.jsonl` if present, else merged from the parts; sorted by key."""
    path = Path(root) / MANIFEST
    recs = read_jsonl(path) if path.is_file() else list(read_records(root).values())
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
    write_bytes(path, "".join(f"{x}\n" for x in lines).encode())


# ------------------------------------------------------------------------------------------------------------
# tar shards

@dataclass(frozen=True)
class ShardEntry:
    """Where a packed clip's bytes are: `shard` (file name under shards/), byte `offset` and `size`."""

    shard: str
    offset: int
    size: int


def tar_bytes(members: list[tuple[str, bytes]]) -> tuple[bytes, list[tuple[str, int, int]]]:
    """An uncompressed GNU tar of `members` (name, data) with fixed metadata, and (name, data offset, size) of each."""
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


def shard_index_records(shard: str, where: list[tuple[str, int, int]]) -> list[dict]:
    """Index records (key, shard, offset, size) of the members of one tar shard (`tar_bytes`' `where`)."""
    return [{"key": name[:-len(".npz")], "shard": shard, "offset": off, "size": size} for name, off, size in where]


def read_shard_index(root) -> dict[str, ShardEntry]:
    """key -> ShardEntry of every packed clip (`shards/index.jsonl`); empty when nothing was packed."""
    index = Path(root) / SHARDS_DIR / SHARD_INDEX
    if not index.is_file():
        return {}
    return {r["key"]: ShardEntry(r["shard"], int(r["offset"]), int(r["size"])) for r in read_jsonl(index)}


def read_packed(root, entry: ShardEntry) -> bytes:
    """The clip file bytes stored in a tar shard."""
    path = Path(root) / SHARDS_DIR / entry.shard
    with open(path, "rb") as f:
        f.seek(entry.offset)
        blob = f.read(entry.size)
    if len(blob) != entry.size:
        raise ClipFormatError(f"{path}: truncated shard: {len(blob)} of {entry.size} bytes at offset {entry.offset}")
    return blob
