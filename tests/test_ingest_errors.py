"""Every bad input of issue 2, as a tiny file, in both --on-error modes and through the CLI."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mri_tune.cli import main
from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError
from mri_tune_datasets.ingest import IngestSettings, ingest


def _missing(tiny) -> str:
    return "nowhere.nii.gz"


def _truncated_nifti(tiny) -> str:
    path = tiny.nifti("full.nii", tiny.phantom((32, 32, 16)))
    data = path.read_bytes()
    (tiny.folder / "truncated.nii").write_bytes(data[: len(data) // 2])
    return "truncated.nii"


def _corrupt_nifti(tiny) -> str:
    (tiny.folder / "corrupt.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 40))
    return "corrupt.nii.gz"


def _truncated_dicom(tiny) -> str:
    path = tiny.dicom(tiny.folder / "full.dcm", np.full((64, 64), 7) + np.eye(64, dtype=int))
    data = path.read_bytes()
    (tiny.folder / "truncated.dcm").write_bytes(data[: len(data) - 3000])
    return "truncated.dcm"


def _not_an_image(tiny) -> str:
    (tiny.folder / "notes.txt").write_text("this is a text file, not a volume\n" * 20)
    return "notes.txt"


def _ct_dicom(tiny) -> str:
    tiny.dicom_series("ct_series", modality="CT")
    return "ct_series"


def _zero_bytes(tiny) -> str:
    (tiny.folder / "empty.nii.gz").write_bytes(b"")
    return "empty.nii.gz"


def _zero_size(tiny) -> str:
    tiny.nifti("zero.nii.gz", np.zeros((16, 0, 4), np.float32))
    return "zero.nii.gz"


def _constant(tiny) -> str:
    tiny.nifti("constant.nii.gz", np.full((16, 16, 6), 42.0, np.float32))
    return "constant.nii.gz"


def _all_nan(tiny) -> str:
    tiny.nifti("nan.nii.gz", np.full((16, 16, 6), np.nan, np.float32))
    return "nan.nii.gz"


def _some_inf(tiny) -> str:
    data = tiny.phantom()
    data[3, 4, 5], data[0, 0, 0] = np.inf, np.nan
    tiny.nifti("inf.nii.gz", data)
    return "inf.nii.gz"


def _absurd_nifti(tiny) -> str:
    path = tiny.nifti("small.nii", tiny.phantom((8, 8, 4)))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<8h", raw, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # dim[0..7]
    (tiny.folder / "absurd.nii").write_bytes(bytes(raw))
    return "absurd.nii"


def _absurd_dicom(tiny) -> str:
    import pydicom

    path = tiny.dicom(tiny.folder / "small.dcm", np.arange(64).reshape(8, 8) + 1)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 5000
    ds.save_as(tiny.folder / "absurd.dcm")
    return "absurd.dcm"


def _empty_dicom_folder(tiny) -> str:
    (tiny.folder / "empty_series").mkdir()
    return "empty_series"


BAD_FILES: dict[str, tuple[Callable, str]] = {
    "missing file": (_missing, "not found"),
    "truncated NIfTI": (_truncated_nifti, "truncated"),
    "corrupt NIfTI": (_corrupt_nifti, "not a readable NIfTI"),
    "truncated DICOM": (_truncated_dicom, "cannot be decoded"),
    "not an image": (_not_an_image, "not a readable DICOM"),
    "non-MR DICOM": (_ct_dicom, "Modality must be MR"),
    "zero-byte file": (_zero_bytes, "empty"),
    "zero-size volume": (_zero_size, "empty"),
    "constant volume": (_constant, "constant"),
    "all voxels NaN": (_all_nan, "not finite"),
    "some voxels non-finite": (_some_inf, "not finite"),
    "absurd NIfTI dimensions": (_absurd_nifti, "GiB"),
    "absurd DICOM dimensions": (_absurd_dicom, "GiB"),
    "empty DICOM folder": (_empty_dicom_folder, "empty folder"),
}


def _manifest_with_bad_row(tiny, bad_path: str, region: str = "head") -> Path:
    rows = tiny.good_rows("head", 3)
    rows.insert(1, (bad_path, region, "bad-subject"))
    return tiny.manifest(rows)


def _settings(manifest: Path, on_error: str) -> IngestSettings:
    return IngestSettings(manifest=manifest, out=manifest.parent / "out" / "store.h5",
                          size=32, on_error=on_error)


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir()] if folder.exists() else []


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_fails_naming_row_file_and_fix(tiny, case: str) -> None:
    build, reason = BAD_FILES[case]
    bad_path = build(tiny)
    settings = _settings(_manifest_with_bad_row(tiny, bad_path), "fail")
    with pytest.raises(InputError) as caught:
        ingest(settings)
    message = str(caught.value)
    assert "manifest row 2" in message and bad_path in message
    assert reason in message
    assert "--on-error skip" in message
    assert _leftovers(settings.out.parent) == []  # no store, no temporary file


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_skipped_and_listed(tiny, case: str) -> None:
    build, reason = BAD_FILES[case]
    bad_path = build(tiny)
    settings = _settings(_manifest_with_bad_row(tiny, bad_path), "skip")
    report = ingest(settings)
    assert [(s["row"], s["path"]) for s in report.skipped] == [(2, bad_path)]
    assert reason in report.skipped[0]["reason"]
    assert f"row 2 {bad_path}" in report.summary()
    store = SliceStore(settings.out)
    assert store.skipped == report.skipped
    assert {v["subject"] for v in store.volumes()} == {"head-s0", "head-s1", "head-s2"}
    assert _leftovers(settings.out.parent) == [settings.out]


def test_unknown_region_fails_and_skips(tiny) -> None:
    manifest = _manifest_with_bad_row(tiny, "head0.nii.gz", region="knee")
    with pytest.raises(InputError, match=r"manifest row 2 .*region must be one of .*'knee'"):
        ingest(_settings(manifest, "fail"))
    report = ingest(_settings(manifest, "skip"))
    assert report.skipped[0]["row"] == 2 and "knee" in report.skipped[0]["reason"]


def test_manifest_without_required_column_fails_in_both_modes(tiny) -> None:
    tiny.good_rows("head", 3)
    manifest = tiny.manifest([("head0.nii.gz", "head")], header="path,region")
    for mode in ("fail", "skip"):
        with pytest.raises(InputError, match=r"lacks the required column\(s\) \['subject'\]"):
            ingest(_settings(manifest, mode))


def test_cli_exit_code_and_message(tiny, capsys) -> None:
    manifest = _manifest_with_bad_row(tiny, _constant(tiny))
    out = tiny.folder / "cli.h5"
    code = main(["ingest", "--manifest", str(manifest), "--out", str(out), "--size", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "manifest row 2" in err and "constant.nii.gz" in err
    assert not out.exists()
    code = main(["ingest", "--manifest", str(manifest), "--out", str(out), "--size", "32",
                 "--on-error", "skip"])
    printed = capsys.readouterr().out
    assert code == 0 and "skipped 1 bad row(s)" in printed and out.exists()


def test_no_patient_field_reaches_store_or_logs(tiny, caplog) -> None:
    rows = tiny.good_rows("head", 2)
    tiny.dicom_series("series")
    rows.append(("series", "head", "dicom-subject"))
    rows.append((_ct_dicom(tiny), "head", "ct-subject"))
    settings = _settings(tiny.manifest(rows), "skip")
    with caplog.at_level("DEBUG"):
        report = ingest(settings)
    blob = settings.out.read_bytes() + caplog.text.encode() + report.summary().encode()
    for secret in (b"Secret", b"SECRET-ID-42", b"19990101"):
        assert secret not in blob


def test_interrupted_ingest_leaves_nothing(tiny, monkeypatch) -> None:
    from mri_tune_datasets import ingest as ingest_module

    settings = _settings(tiny.manifest(tiny.good_rows("head", 3)), "fail")
    calls = []

    def interrupted(item, prep, root):
        calls.append(item.row.row)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(item, prep, root)

    original = ingest_module.read_row
    monkeypatch.setattr(ingest_module, "read_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(settings)
    assert _leftovers(settings.out.parent) == []

