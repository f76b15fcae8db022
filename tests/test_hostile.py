"""Hostile inputs: files from strangers run no code, lying headers and link cycles stay bounded, user mistakes are
one line (issue 13). Every crafted file here is first shown to be hostile (the unsafe way of reading it does what
it should not), then every pdfgc entry point that reads that kind of file is shown to refuse it."""
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pdfgc.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------ crafted files
class _WritesMarker:
    """Pickles to "call exec(<write the marker file>)": loading it with weights_only=False runs that code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _evil_pickle(path: Path, marker: Path, as_state_dict: bool = True) -> Path:
    payload = {"weight": _WritesMarker(marker)} if as_state_dict else _WritesMarker(marker)
    torch.save(payload, path)
    return path


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg.strip(), msg
    return msg


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "MARKER"
    yield m
    assert not m.exists(), "a crafted file ran code"


def test_the_crafted_pickle_is_really_hostile(tmp_path):
    # the oracle: read the unsafe way, the file writes its marker (so the tests below prove something)
    m = tmp_path / "unsafe_marker"
    f = _evil_pickle(tmp_path / "evil.pth", m)
    torch.load(f, map_location="cpu", weights_only=False)
    assert m.read_text() == "code ran"


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    from pdfgc.models.bundle import make_random_official

    return make_random_official(tmp_path_factory.mktemp("official") / "ckpt", "tiny", seed=3)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_infer_checkpoint_pickle_runs_no_code(official, tmp_path, marker):
    from pdfgc.models.bundle import load_any
    from pdfgc.models.checkpoint import CheckpointError

    folder = _copy(official, tmp_path / "ckpt")
    _evil_pickle(folder / "motion_model.pth", marker)
    with pytest.raises(CheckpointError) as ei:
        load_any(folder)
    msg = _one_line(ei.value)
    assert str(folder / "motion_model.pth") in msg and "weights_only" not in msg.split("(")[0]


@pytest.mark.parametrize("target", ["subprocess.run", "os.system", "builtins.exec"])
def test_official_folder_config_naming_a_callable_is_refused(official, tmp_path, marker, target):
    from pdfgc.models.bundle import load_official
    from pdfgc.models.checkpoint import OFFICIAL_CONFIG_FILE

    folder = _copy(official, tmp_path / "ckpt")
    cfg = json.loads((folder / OFFICIAL_CONFIG_FILE).read_text())
    arg = ["touch", str(marker)] if target == "subprocess.run" else (
        f"touch {marker}" if target == "os.system" else f"open({str(marker)!r}, 'w')")
    cfg["motion"] = {"_target_": target, "args": arg}
    (folder / OFFICIAL_CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(UserError) as ei:
        load_official(folder)
    msg = _one_line(ei.value)
    assert str(folder / OFFICIAL_CONFIG_FILE) in msg and "_target_" in msg and target in msg


def test_export_component_config_naming_os_system_is_refused(official, tmp_path, marker):
    from pdfgc.models.bundle import convert_official, load_any

    export = convert_official(official, tmp_path / "export")
    cfg_file = export / "generator" / "config.json"
    cfg_file.write_text(json.dumps({"_target_": "os.system", "command": f"touch {marker}"}))
    with pytest.raises(UserError) as ei:
        load_any(export)
    msg = _one_line(ei.value)
    assert str(cfg_file) in msg and "_target_" in msg and "os.system" in msg


def test_convert_cli_refuses_a_hostile_folder_with_exit_2(official, tmp_path, marker, capsys):
    from pdfgc.models.convert import main

    folder = _copy(official, tmp_path / "ckpt")
    _evil_pickle(folder / "generator_model.pth", marker)
    assert main([str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "generator_model.pth" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))


@pytest.mark.parametrize("bad", ["[1, 2]", "{not json", "\xff\xfe garbage", '{"format": "pdfgc", "version": []}'])
def test_malformed_export_index_is_one_line(official, tmp_path, bad):
    from pdfgc.models.bundle import convert_official, load_any

    export = convert_official(official, tmp_path / "export")
    (export / "model_index.json").write_bytes(bad.encode("latin-1"))
    with pytest.raises(UserError) as ei:
        load_any(export)
    assert "model_index.json" in _one_line(ei.value)


@pytest.mark.parametrize("cfg", ["[]", '{"motion": {"_target_": "pdfgc.models.motion.MotionEncoder", "bogus": 1}}',
                                 '{"generator": {"image_size": "x"}, "appearance": {}}'])
def test_malformed_folder_config_is_one_line_naming_the_file(official, tmp_path, cfg):
    from pdfgc.models.bundle import load_official
    from pdfgc.models.checkpoint import OFFICIAL_CONFIG_FILE

    folder = _copy(official, tmp_path / "ckpt")
    (folder / OFFICIAL_CONFIG_FILE).write_text(cfg)
    with pytest.raises(UserError) as ei:
        load_official(folder)
    assert str(folder / OFFICIAL_CONFIG_FILE) in _one_line(ei.value)


def test_config_asking_for_a_giant_network_is_refused_before_allocating(tmp_path):
    from pdfgc.models.config import build_component

    # 4e12 parameters: would need 16 TB; the meta-device count refuses it without allocating anything
    entry = {"_target_": "pdfgc.models.audio.AudioEncoder", "lip_dim": 2_000_000_000}
    with pytest.raises(UserError) as ei:
        build_component(entry, source="x/config.json", max_params=50_000_000)
    msg = _one_line(ei.value)
    assert "x/config.json" in msg and "max_params=50,000,000" in msg


@pytest.mark.parametrize("as_state_dict", [True, False])
def test_training_checkpoint_pickle_runs_no_code(tmp_path, marker, as_state_dict):
    # ckpt_path (resume) and stage.init_from both read through pdfgc.train.checkpoint
    from pdfgc.train import checkpoint as ckpt_format

    f = _evil_pickle(tmp_path / "last.ckpt", marker, as_state_dict)
    with pytest.raises(UserError) as ei:
        ckpt_format.read(f)
    assert str(f) in _one_line(ei.value)


def test_clip_file_with_a_pickled_array_runs_no_code(tmp_path, marker):
    # preprocessed clips (Vox2Source, preprocess resume) are read with allow_pickle=False
    from pdfgc.data import clipstore

    buf = io.BytesIO()
    np.save(buf, np.array([_WritesMarker(marker)], dtype=object), allow_pickle=True)
    f = tmp_path / "clip.npz"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("jpeg.npy", buf.getvalue())
        z.writestr("meta.npy", buf.getvalue())
    with pytest.raises(Exception):
        clipstore.read_clip(f)


# files allowed to call torch.load without weights_only=True, with the reason; everything else must not
KNOWN_UNSAFE_LOADS = {
    "src/pdfgc/eval/estimator.py",  # owned by the eval work (issue 13 item 1): still weights_only=False
}


def test_no_unsafe_torch_load_outside_the_known_list():
    found = set()
    files = list((ROOT / "src").rglob("*.py")) + list((ROOT / "preprocess").rglob("*.py")) + \
        [ROOT / "infer.py", ROOT / "train.py"]
    for f in files:
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                found.add(f.relative_to(ROOT).as_posix())
        if "weights_only=False" in text or "allow_pickle=True" in text:
            found.add(f.relative_to(ROOT).as_posix())
    assert found <= KNOWN_UNSAFE_LOADS, sorted(found - KNOWN_UNSAFE_LOADS)
