"""pdfgc.fileio: the one atomic-write helper behind checkpoints, exports, videos, reports and shards."""
import os
import stat

import pytest

from pdfgc.fileio import atomic_path, atomic_write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    dst = tmp_path / "report.json"
    atomic_write_text(dst, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(dst) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert dst.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_written_file_gets_the_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        dst = atomic_write_text(tmp_path / "sub" / "a.txt", "x")  # parent folders are created
    finally:
        os.umask(old)
    assert dst.read_text() == "x"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o644
