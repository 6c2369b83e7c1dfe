"""Writing by a rename: a failed write leaves the earlier file whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from mri_tune_core.files import replace_atomically


def test_a_write_replaces_the_file_and_a_failed_one_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")

    def fail(partial: Path) -> None:
        partial.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, fail)
    assert path.read_text() == "old"
    assert replace_atomically(path, lambda partial: partial.write_text("new")) == path
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
