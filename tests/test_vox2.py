"""Vox2Source over a hand-made preprocessed folder (no landmark model needed): decoding, factors, splits, errors,
and the `data=vox2` Hydra config building the DataModule."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
from pdfgc.data import clipstore

from pdfgc.data.sources import FACTOR_KEYS, check_source
from pdfgc.data.vox2 import Vox2Source

S = 224


def _frame(t: int, clip: int) -> np.ndarray:
    """A smooth, clip- and frame-specific colour field (JPEG keeps it within a few levels)."""
    y, x = np.mgrid[0:S, 0:S].astype(np.float32) / S
    img = np.stack([40 + 150 * x, 40 + 150 * y, np.full_like(x, 20 + 10 * t + 60 * clip)], -1)
    return img.clip(0, 255).astype(np.uint8)


def _write(root: Path, key: str, identity: str, clip: int, t: int, status: str = "ok") -> dict:
    rec = {"key": key, "identity": identity, "status": status, "reason": "" if status == "ok" else "no_face"}
    if status == "ok":
        frames = np.stack([_frame(i, clip) for i in range(t)])
        jpeg, off = clipstore.encode_jpeg_frames(frames, 95)
        pose = np.zeros((t, 6), np.float32)
        pose[:, 0] = np.arange(t) * 0.01 + clip  # yaw encodes (clip, frame) so the test can check the lookup
        arrays = {"jpeg": jpeg, "jpeg_offsets": off, "mel": np.full((4 * t + 7, 80), 0.5, np.float32),
                  "audio": np.zeros(640 * t, np.int16), "pose": pose,
                  "eye_open": np.full((t, 2), 0.75, np.float32), "mouth": np.zeros((t, 2), np.float32),
                  "eye_box": np.tile(np.float32([0.3, 0.2, 0.7, 0.35]), (t, 1)),
                  "mouth_box": np.tile(np.float32([0.4, 0.5, 0.6, 0.6]), (t, 1)),
                  "landmarks": np.full((t, 68, 2), 112.0, np.float32)}
        clipstore.write_clip(clipstore.clip_path(root, key), arrays, {"key": key, "image_size": S})
        rec.update(num_frames=t, image_size=S, path=f"clips/{key}.npz")
    return rec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox2out")
    recs = [_write(root, "id00007/a/00001", "id00007", 0, 30), _write(root, "id00007/a/00002", "id00007", 1, 12),
            _write(root, "id00009/b/00001", "id00009", 2, 30), _write(root, "id00011/c/00001", "id00011", 3, 30),
            _write(root, "id00011/c/00002", "id00011", 4, 30, status="skipped")]
    for i, r in enumerate(recs):  # as two machine shards wrote them
        clipstore.append_record(root / "manifest" / clipstore.part_name(i % 2, 2), r)
    return root


def test_reads_manifest_parts_and_serves_ok_clips(dataset):
    src = Vox2Source(dataset, split="all")
    check_source(src)
    assert len(src) == 4  # the skipped clip is not served
    assert src.image_size == 224 and src.identity_names == ["id00007", "id00009", "id00011"]
    assert [src.identity(i) for i in range(4)] == [0, 0, 1, 2]
    assert [src.num_frames(i) for i in range(4)] == [30, 12, 30, 30]
    assert Vox2Source(dataset, split="all", min_frames=25).num_frames(1) == 30  # the 12-frame clip is dropped


def test_frames_decode_to_what_was_stored(dataset):
    src = Vox2Source(dataset, split="all")
    got = src.frames(2, [0, 7, 29])
    assert got.shape == (3, 224, 224, 3) and got.dtype == np.uint8
    for j, t in enumerate([0, 7, 29]):
        assert np.abs(got[j].astype(int) - _frame(t, 2)).mean() < 2.0  # JPEG q95 of a smooth field
    small = Vox2Source(dataset, split="all", image_size=64).frames(2, [7])
    assert small.shape == (1, 64, 64, 3)
    # area resizing keeps the mean colour (channel 2 is flat: 20 + 70 + 120 = 210)
    assert abs(float(small[0, ..., 2].mean()) - 210) < 2.0


def test_factors_and_mel(dataset):
    src = Vox2Source(dataset, split="all")
    fac = src.factors(2, [3, 10])
    assert set(fac) == set(FACTOR_KEYS)
    np.testing.assert_allclose(fac["pose"][:, 0], [2.03, 2.10], atol=1e-6)
    np.testing.assert_allclose(fac["eye_open"], 0.75)
    np.testing.assert_allclose(fac["eye_box"][1], [0.3, 0.2, 0.7, 0.35])
    assert np.isnan(fac["gaze"]).all() and np.isnan(fac["emotion_intensity"]).all() and (fac["emotion"] == -1).all()
    assert src.mel(0).shape == (4 * 30 + 7, 80) and src.mel(0).dtype == np.float32
    assert src.landmarks(0, [0]).shape == (1, 68, 2)
    np.testing.assert_allclose(Vox2Source(dataset, split="all", image_size=112).landmarks(0, [0]), 56.0)


def test_splits_by_identity(dataset, tmp_path):
    (dataset / "splits").mkdir(exist_ok=True)
    clipstore.write_lines(dataset / "splits" / "train.txt", ["id00007", "id00011"])
    clipstore.write_lines(dataset / "splits" / "test.txt", ["id00009"])
    train, test = Vox2Source(dataset, split="train"), Vox2Source(dataset, split="test")
    assert [train.key(i) for i in range(len(train))] == ["id00007/a/00001", "id00007/a/00002", "id00011/c/00001"]
    assert [test.key(i) for i in range(len(test))] == ["id00009/b/00001"]
    custom = tmp_path / "mine.txt"
    custom.write_text("# my split\nid00011\n\n")
    assert len(Vox2Source(dataset, split="train", split_file=custom)) == 1


def test_errors_say_what_to_do(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m preprocess"):
        Vox2Source(tmp_path / "empty")
    src = Vox2Source(dataset, split="all")
    with pytest.raises(IndexError, match=r"\[0, 12\)"):
        src.frames(1, [12])
    with pytest.raises(IndexError, match="clip 9"):
        src.num_frames(9)
    with pytest.raises(ValueError, match="split must be"):
        Vox2Source(dataset, split="val")
    with pytest.raises(ValueError, match="no usable clip"):
        Vox2Source(dataset, split="all", min_frames=1000)


def test_pickles_without_its_cache(dataset):
    src = Vox2Source(dataset, split="all")
    src.frames(0, [0])
    assert len(src._cache) == 1
    clone = pickle.loads(pickle.dumps(src))
    assert len(clone._cache) == 0
    np.testing.assert_array_equal(clone.frames(0, [5]), src.frames(0, [5]))


def test_manifest_jsonl_wins_and_torn_lines_are_ignored(dataset, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    lines = [json.dumps(r) for r in map(json.loads, (root / "manifest" / "part-00000-of-00002.jsonl").read_text()
                                        .splitlines())]
    (root / "manifest.jsonl").write_text("\n".join(lines) + '\n{"key": "torn')
    src = Vox2Source(root, split="all")
    assert [src.key(i) for i in range(len(src))] == ["id00007/a/00001", "id00009/b/00001"]


def test_vox2_config_builds_the_datamodule(dataset):
    pytest.importorskip("hydra")
    from hydra.utils import instantiate

    from pdfgc.data.contract import validate_batch
    from pdfgc.data.stage_datasets import PoseDataset
    from pdfgc.train.config import compose

    (dataset / "splits").mkdir(exist_ok=True)
    clipstore.write_lines(dataset / "splits" / "train.txt", ["id00007", "id00009", "id00011"])
    clipstore.write_lines(dataset / "splits" / "test.txt", ["id00009"])
    cfg = compose(["data=vox2", "stage=pose", "model=tiny", "data.num_workers=0", f"data.train_source.root={dataset}",
                   "data.batch_size=2", "data.train_source.min_frames=25"])
    assert cfg.data.val_source.root == str(dataset)
    dm = instantiate(cfg.data, dataset=PoseDataset, _recursive_=False)
    batch = dm.example_batch()
    s = int(cfg.model.image_size)
    assert validate_batch(PoseDataset, batch, s) == 2
    assert Path(dm.train_source.root) == dataset and len(dm.train_source) == 3


def test_tar_shards_serve_the_same_clips(dataset, tmp_path):
    import shutil
    import tarfile

    from preprocess import pack

    root = tmp_path / "packed"
    shutil.copytree(dataset, root)
    (root / "manifest.jsonl").unlink(missing_ok=True)
    loose = Vox2Source(root, split="all")
    want = [loose.frames(i, [0, 3]) for i in range(len(loose))]
    res = pack.pack(root, clips_per_shard=3, remove_clips=True)
    assert res == {"clips": 4, "shards": 2, "written": 2, "kept": 0, "removed": 4}
    assert not list((root / "clips").rglob("*.npz"))
    # a standard tar: members are the clip files in key order
    with tarfile.open(root / "shards" / "shard-00000.tar") as tf:
        assert tf.getnames() == ["id00007/a/00001.npz", "id00007/a/00002.npz", "id00009/b/00001.npz"]
    packed = Vox2Source(root, split="all")
    for i in range(len(packed)):
        np.testing.assert_array_equal(packed.frames(i, [0, 3]), want[i])
    check_source(packed)
    # packing again keeps the finished shards (resumable) and gives the same bytes
    before = (root / "shards" / "shard-00001.tar").read_bytes()
    (root / "shards" / "index.jsonl").unlink()
    again = pack.pack(root, clips_per_shard=3)
    assert again["kept"] == 2 and (root / "shards" / "shard-00001.tar").read_bytes() == before
    assert len((root / "shards" / "index.jsonl").read_text().splitlines()) == 4
