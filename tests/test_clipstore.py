"""The preprocessed-clip format has one owner, `pdfgc.data.clipstore`: a write -> read round trip gives the same
arrays, the bytes follow the documented deterministic layout (checked with zipfile/tarfile, not with our reader),
bad arrays are refused, and neither `preprocess` nor `Vox2Source` reads or writes the format by itself."""
import ast
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pdfgc.data import clipstore

ROOT = Path(__file__).resolve().parents[1]
T = 5


def full_clip(seed: int = 0) -> dict:
    """Every field of the format with its dtype and shape for T frames, random contents."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8)
    jpeg, off = clipstore.encode_jpeg_frames(frames, 90)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {"jpeg": jpeg, "jpeg_offsets": off, "audio": rng.integers(-32767, 32768, 640 * T).astype(np.int16),
            "mel": f32(4 * T + 7, 80), "landmarks": f32(T, 68, 2), "landmarks_src": f32(T, 68, 2),
            "found": rng.random(T) > 0.3, "matrices": f32(T, 2, 3), "pose": f32(T, 6), "ear": f32(T, 2),
            "eye_open": f32(T, 2), "mouth": f32(T, 2), "eye_box": f32(T, 4), "mouth_box": f32(T, 4)}


def test_round_trip_gives_the_same_arrays(tmp_path):
    arrays = full_clip()
    assert set(arrays) == set(clipstore.FIELDS)  # the helper covers the whole format
    meta = {"key": "id1/v/00001", "identity": "id1", "image_size": 32, "version": clipstore.FORMAT_VERSION}
    path = clipstore.clip_path(tmp_path, meta["key"])
    assert path == tmp_path / "clips" / "id1" / "v" / "00001.npz"
    clipstore.write_clip(path, arrays, meta)
    for got in (clipstore.read_clip(path), clipstore.read_clip(path.read_bytes())):
        assert got.pop("meta") == meta
        assert set(got) == set(arrays)
        for k, a in arrays.items():
            assert got[k].dtype == a.dtype and np.array_equal(got[k], a), k


def test_clip_bytes_are_deterministic_and_plain_npz(tmp_path):
    """Same arrays -> same bytes; members sorted by name, stored uncompressed, 1980-01-01 timestamps, meta is
    sorted-key json (read here with zipfile and numpy's .npy reader, independently of clipstore.read_clip)."""
    arrays, meta = full_clip(), {"b": 1, "a": "x"}
    data = clipstore.encode_clip(arrays, meta)
    assert data == clipstore.encode_clip(dict(reversed(list(arrays.items()))), dict(reversed(list(meta.items()))))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == sorted(f"{k}.npy" for k in [*arrays, "meta"])
        assert all(i.compress_type == zipfile.ZIP_STORED and i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
        raw_meta = np.lib.format.read_array(io.BytesIO(zf.read("meta.npy")))
        pose = np.lib.format.read_array(io.BytesIO(zf.read("pose.npy")))
    assert bytes(raw_meta) == b'{"a": "x", "b": 1}' and np.array_equal(pose, arrays["pose"])


def test_bad_arrays_are_refused():
    arrays = full_clip()
    with pytest.raises(clipstore.ClipFormatError, match="pose: expected dtype float32, got float64"):
        clipstore.encode_clip({**arrays, "pose": arrays["pose"].astype(np.float64)}, {})
    with pytest.raises(clipstore.ClipFormatError, match=r"unknown field\(s\) \['colour'\]"):
        clipstore.encode_clip({**arrays, "colour": np.zeros(3, np.float32)}, {})
    with pytest.raises(clipstore.ClipFormatError, match=r"missing required field\(s\) \['mel'\]"):
        clipstore.encode_clip({k: v for k, v in arrays.items() if k != "mel"}, {})


def test_reader_accepts_numpys_own_npz_and_refuses_newer_versions(tmp_path):
    """A clip written by numpy.savez (not our writer) reads the same: the reader depends on the format, not on our
    byte layout; a file of a newer format version is refused with a message."""
    arrays = full_clip(1)
    buf = io.BytesIO()
    np.savez(buf, **arrays, meta=np.frombuffer(json.dumps({"image_size": 32}).encode(), np.uint8))
    got = clipstore.read_clip(buf.getvalue())
    assert got["meta"] == {"image_size": 32} and np.array_equal(got["mel"], arrays["mel"])
    newer = clipstore.encode_clip(arrays, {"version": clipstore.FORMAT_VERSION + 1})
    with pytest.raises(clipstore.ClipFormatError, match="newer"):
        clipstore.read_clip(newer)
    with pytest.raises(clipstore.ClipFormatError, match="not a readable clip"):
        clipstore.read_clip(b"not a zip")


def test_jpeg_frames_and_pcm16():
    y, x = np.mgrid[0:48, 0:48].astype(np.float32)
    frames = np.stack([np.stack([x * 4, y * 4, np.full_like(x, 30 * t)], -1) for t in range(3)]).astype(np.uint8)
    jpeg, off = clipstore.encode_jpeg_frames(frames, 95)
    assert off.dtype == np.int64 and off[0] == 0 and off[-1] == len(jpeg) and len(off) == 4
    got = clipstore.decode_jpeg_frames(jpeg, off, [2, 0])
    assert got.shape == (2, 48, 48, 3) and np.abs(got.astype(int) - frames[[2, 0]]).mean() < 2.0  # RGB order kept
    small = clipstore.decode_jpeg_frames(jpeg, off, [1], size=24)
    assert small.shape == (1, 24, 24, 3) and abs(float(small[0, ..., 2].mean()) - 30) < 2.0
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        clipstore.decode_jpeg_frames(jpeg, off, [3])
    # int16 PCM: full scale 32767, clipped, rounded half to even
    assert clipstore.pcm16(np.float32([0.5, -1.5, 1.0, 0.0])).tolist() == [16384, -32767, 32767, 0]
    wav = np.linspace(-1, 1, 101, dtype=np.float32)
    back = clipstore.from_pcm16(clipstore.pcm16(wav))
    assert back.dtype == np.float32 and np.abs(back - wav).max() <= 0.5 / 32767 + 1e-7


def test_tar_shard_offsets_point_at_the_members(tmp_path):
    members = [("id1/v/00001.npz", b"a" * 700), ("id1/v/" + "x" * 120 + ".npz", b"bb" * 300)]  # a long GNU name
    data, where = clipstore.tar_bytes(members)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-00000.tar").write_bytes(data)
    recs = clipstore.shard_index_records("shard-00000.tar", where)
    assert [r["key"] for r in recs] == ["id1/v/00001", "id1/v/" + "x" * 120]
    clipstore.write_jsonl(tmp_path / "shards" / "index.jsonl", recs)
    index = clipstore.read_shard_index(tmp_path)
    with tarfile.open(tmp_path / "shards" / "shard-00000.tar") as tf:  # the standard reader as the oracle
        for name, blob in members:
            assert tf.extractfile(name).read() == blob
            assert clipstore.read_packed(tmp_path, index[name[:-4]]) == blob
    assert clipstore.tar_bytes(members)[0] == data


def _io_calls(path: Path) -> list[str]:
    """Format I/O primitives used by a module's code: npz/zip/tar/jpeg/json readers and writers."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [n for n in names if n in ("zipfile", "tarfile")]
        elif isinstance(node, ast.Attribute) and node.attr in ("load", "savez", "imdecode", "imencode", "loads",
                                                                "write_array", "read_array"):
            owner = node.value.id if isinstance(node.value, ast.Name) else ""
            if owner in ("np", "numpy", "cv2", "json"):
                found.append(f"{owner}.{node.attr}")
    return found


def test_preprocess_and_vox2_go_through_clipstore_only():
    import preprocess.clip
    import preprocess.pack
    import preprocess.run
    from pdfgc.data import vox2

    assert preprocess.clip.clipstore is vox2.clipstore is clipstore
    assert preprocess.run.clipstore is clipstore and preprocess.pack.clipstore is clipstore
    assert not (ROOT / "preprocess" / "store.py").exists()
    files = sorted((ROOT / "preprocess").glob("*.py")) + [ROOT / "src" / "pdfgc" / "data" / "vox2.py"]
    offenders = {p.name: calls for p in files if (calls := _io_calls(p))}
    assert offenders == {}, f"format I/O outside pdfgc.data.clipstore: {offenders}"
    assert _io_calls(ROOT / "src" / "pdfgc" / "data" / "clipstore.py")  # the scan does see the owner's I/O
