"""`Vox2Source`: the `ClipSource` over preprocessed VoxCeleb2 (or any video folder) written by `python -m preprocess`.

The folder's format (`manifest.jsonl`, `clips/<key>.npz`, `splits/{train,test}.txt`, the tar shards of
`python -m preprocess.pack`) is owned by `pdfgc.data.clipstore`, which the preprocessing writes with; this module only
serves what it reads. A clip whose file is absent is read from the tar shards (`shards/index.jsonl`).

Only clips with status "ok" whose identity is in the requested split are served. Identity labels are the index of
the identity name in the sorted list of identities of the served clips (train and test labels are therefore separate
label spaces; the names are kept in `identity_names`).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from pdfgc.data import clipstore
from pdfgc.data.sources import empty_factors
from pdfgc.errors import UserError


class Vox2Error(UserError, ValueError):
    """A preprocessed folder or split that cannot serve clips; the message says what to do."""


class Vox2NotFoundError(Vox2Error, FileNotFoundError):
    """The preprocessed folder or its split list is missing."""


class Vox2Source:
    """Preprocessed talking-face clips as a ClipSource (frames decoded lazily, per requested index).

    Args:
        root: output folder of `python -m preprocess` (holds manifest.jsonl, clips/, splits/).
        split: "train", "test" or "all".
        split_file: a text file of identity names (one per line) to serve instead of `root/splits/<split>.txt`.
        min_frames: ignore clips with fewer frames (e.g. the K of the emo stage + the audio offset).
        image_size: expected crop size; frames of another size are resized (bilinear), e.g. 224 -> 64 for the tiny
            model. None = the stored size.
        cache_clips: opened clip files kept per process (frames stay JPEG in memory; decoded on request).
    """

    def __init__(self, root, split: str = "train", split_file=None, min_frames: int = 1,
                 image_size: int | None = None, cache_clips: int = 16):
        self.root = Path(root)
        if split not in ("train", "test", "all"):
            raise Vox2Error(f"Vox2Source: split must be 'train', 'test' or 'all', got {split!r}")
        if not clipstore.has_manifest(self.root):
            raise Vox2NotFoundError(
                f"Vox2Source: {self.root / clipstore.MANIFEST} not found; run `python -m preprocess --input VIDEOS "
                f"--output {self.root}` first (or `--finalize-only` to merge the manifest parts of a sharded run)")
        records = clipstore.load_manifest(self.root)
        ok = [r for r in records if r.get("status") == "ok" and int(r.get("num_frames", 0)) >= int(min_frames)]
        if split_file is not None or split != "all":
            sf = Path(split_file) if split_file is not None else clipstore.split_path(self.root, split)
            if not sf.is_file():
                raise Vox2NotFoundError(f"Vox2Source: split list {sf} not found; rerun `python -m preprocess "
                                        f"--finalize-only --output {self.root}` or pass split='all'")
            keep = set(clipstore.read_split(sf))
            usable = {r["identity"] for r in ok}
            ok = [r for r in ok if r["identity"] in keep]
            if not ok and split == "test" and split_file is None and usable:
                # a small preprocessed set: the hash split (--test-fraction) put no identity in test
                raise Vox2Error(
                    f"Vox2Source: the test split {sf} of {self.root} holds no identity with usable clips (the "
                    f"preprocessing put {len(keep)} of {len(usable) + len(keep - usable)} identities there; "
                    "a small set often gets none). Train without validation: data.val_source=null (or "
                    "data.val_length=0); or choose test identities: python -m preprocess --finalize-only "
                    f"--output {self.root} --split-file IDS.txt (or a larger --test-fraction)")
        if not ok:
            raise Vox2Error(f"Vox2Source: no usable clip in {self.root} for split {split!r} (manifest holds "
                             f"{len(records)} records, {sum(r.get('status') == 'ok' for r in records)} ok; "
                             f"min_frames={min_frames})")
        self.records = sorted(ok, key=lambda r: r["key"])
        self.identity_names = sorted({r["identity"] for r in self.records})
        self._label = {n: i for i, n in enumerate(self.identity_names)}
        self.split = split
        self._packed = clipstore.read_shard_index(self.root)
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cache_size = max(1, int(cache_clips))
        stored = self.records[0].get("image_size") or self._load(0)["meta"]["image_size"]
        self.image_size = int(image_size) if image_size is not None else int(stored)

    def __getstate__(self):
        # DataLoader workers get a copy without the opened clips (each worker fills its own cache)
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    # ---- file access ----
    def clip_file(self, i: int) -> Path:
        r = self.records[self._check(i)]
        return self.root / r.get("path", clipstore.clip_relpath(r["key"]))

    def _load(self, i: int) -> dict:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        path = self.clip_file(i)
        key = self.records[i]["key"]
        try:
            if not path.is_file() and key in self._packed:
                entry = self._packed[key]
                path = self.root / clipstore.SHARDS_DIR / entry.shard
                data = clipstore.read_clip(clipstore.read_packed(self.root, entry))
            else:
                data = clipstore.read_clip(path)
        except (OSError, ValueError) as e:
            raise OSError(f"Vox2Source: cannot read clip file {path} ({e}); delete it and rerun the preprocessing "
                          "(it will be rebuilt)") from e
        self._cache[i] = data
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return data

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self.records):
            raise IndexError(f"Vox2Source: clip {i} out of range [0, {len(self.records)})")
        return i

    def _idx(self, i: int, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        n = self.num_frames(i)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"Vox2Source: frame indices must lie in [0, {n}) for clip {i} "
                             f"({self.records[i]['key']}), got [{idx.min()}, {idx.max()}]")
        return idx

    # ---- ClipSource ----
    def __len__(self) -> int:
        return len(self.records)

    def num_frames(self, i: int) -> int:
        return int(self.records[self._check(i)]["num_frames"])

    def identity(self, i: int) -> int:
        return self._label[self.records[self._check(i)]["identity"]]

    def key(self, i: int) -> str:
        return self.records[self._check(i)]["key"]

    def frames(self, i: int, idx: Sequence[int]) -> np.ndarray:
        """uint8 `(len(idx), S, S, 3)` RGB aligned crops (resized to `image_size` if stored at another size)."""
        idx = self._idx(i, idx)
        d = self._load(i)
        try:
            return clipstore.decode_jpeg_frames(d["jpeg"], d["jpeg_offsets"], idx, size=self.image_size)
        except clipstore.ClipFormatError as e:
            raise OSError(f"Vox2Source: {e} in {self.clip_file(i)}; delete the file and rerun the preprocessing") \
                from e

    def mel(self, i: int) -> np.ndarray:
        """float32 `(T_mel, 80)` of the whole clip (as computed at preprocessing by pdfgc.data.audio)."""
        return np.asarray(self._load(i)["mel"], dtype=np.float32)

    def audio(self, i: int) -> np.ndarray:
        """float32 16 kHz mono waveform of the clip (stored as 16-bit PCM)."""
        return clipstore.from_pcm16(self._load(i)["audio"])

    def landmarks(self, i: int, idx: Sequence[int]) -> np.ndarray:
        """float32 `(len(idx), 68, 2)` landmarks in pixels of the `image_size` crop."""
        idx = self._idx(i, idx)
        d = self._load(i)
        scale = self.image_size / float(d["meta"]["image_size"])
        return d["landmarks"][idx] * np.float32(scale)

    def factors(self, i: int, idx: Sequence[int]) -> dict[str, np.ndarray]:
        """Per-frame factors (keys of pdfgc.data.sources.FACTOR_SPECS): pose, eye_open, mouth and the boxes from
        preprocessing; gaze, emotion and emotion_intensity are unknown for real footage (NaN / -1)."""
        idx = self._idx(i, idx)
        d = self._load(i)
        out = empty_factors(len(idx))
        for k in clipstore.FACTOR_FIELDS:
            if k in d:
                out[k][:] = d[k][idx]
        return out
