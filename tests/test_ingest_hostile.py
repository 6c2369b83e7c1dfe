"""Issue 11, ingest half: hostile inputs and clumsy use end in a clear error or a skipped row,
never a hang, a traceback, a leak of host paths or manifest columns, or a read outside the root."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement

from mri_tune.cli import main
from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError
from mri_tune_datasets import ingest as ingest_module
from mri_tune_datasets.ingest import IngestSettings, ingest
from mri_tune_datasets.split import parse_split_fractions


def _settings(manifest: Path, on_error: str, **options) -> IngestSettings:
    return IngestSettings(manifest=manifest, out=manifest.parent / "out" / "store.h5", size=32,
                          on_error=on_error, **options)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------ split fractions

@pytest.mark.parametrize("text", ["nan,0.5,0.5", "inf,0.5,0.5", "0.5,nan,0.5", "-0.5,1,0.5",
                                  "0.5,0.5", "0.6,0.3,0.3"])
def test_split_fractions_must_be_finite_positive_and_sum_to_one(text: str) -> None:
    with pytest.raises(InputError, match=r"finite positive fractions summing to 1.*got"):
        parse_split_fractions(text)


def test_nan_split_is_refused_before_anything(tiny, capsys) -> None:
    """It used to loop forever in split_targets; now the CLI refuses it up front."""
    manifest = tiny.manifest(tiny.good_rows("head", 3))
    out = tiny.folder / "s.h5"
    assert main(["ingest", "--manifest", str(manifest), "--out", str(out),
                 "--split", "nan,0.5,0.5"]) == 2
    assert "'nan,0.5,0.5'" in capsys.readouterr().err
    with pytest.raises(InputError, match="finite positive"):
        IngestSettings(manifest=manifest, out=out, split=(math.nan, 0.5, 0.5))
    assert not out.exists()


# -------------------------------------------------------------------------- hostile volume files

def _dicom_series_with(tiny, name: str, tag: int, element: DataElement | list[float]) -> str:
    folder = tiny.dicom_series(name, n=4)
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        if isinstance(element, DataElement):
            ds[tag] = element
        else:
            ds[tag].value = element
        ds.save_as(path)
    return name


def _orientation_zeros(tiny) -> str:
    return _dicom_series_with(tiny, "iop_zero", 0x00200037, [0.0] * 6)


def _orientation_text(tiny) -> str:
    return _dicom_series_with(tiny, "iop_text", 0x00200037,
                              DataElement(0x00200037, "LO", "left\\up\\x\\y\\z\\w"))


def _pixel_spacing_zero(tiny) -> str:
    return _dicom_series_with(tiny, "spacing_zero", 0x00280030, [0.0, 0.0])


def gzip_bomb(path: Path, shape: tuple[int, int, int] = (1024, 1024, 1024)) -> Path:
    """A real .nii.gz of about 1 MB that expands to 1 GiB of uint8 zeros (concatenated gzip
    members of one compressed 16 MiB block)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    block = gzip.compress(bytes(16 * 1024**2), compresslevel=9)
    n_bytes = int(np.prod(shape))
    with open(path, "wb") as handle:
        handle.write(gzip.compress(header.binaryblock + b"\0" * 4))
        for _ in range(n_bytes // (16 * 1024**2)):
            handle.write(block)
    return path


def _bomb(tiny) -> str:
    gzip_bomb(tiny.folder / "bomb.nii.gz")
    return "bomb.nii.gz"


HOSTILE_FILES: dict[str, tuple[Callable, str]] = {
    "DICOM orientation all zeros": (_orientation_zeros, "orthogonal unit vectors"),
    "DICOM orientation as text": (_orientation_text, "ImageOrientationPatient must be 6 finite"),
    "DICOM pixel spacing 0": (_pixel_spacing_zero, "PixelSpacing must be two positive"),
    "1 MB .nii.gz expanding to 1 GiB": (_bomb, "voxels"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_file_is_skipped_or_named(tiny, case: str) -> None:
    build, reason = HOSTILE_FILES[case]
    bad_path = build(tiny)
    rows = tiny.good_rows("head", 3)
    rows.insert(1, (bad_path, "head", "bad-subject"))
    manifest = tiny.manifest(rows)
    with pytest.raises(InputError) as caught:
        ingest(_settings(manifest, "fail"))
    message = str(caught.value)
    assert "manifest row 2" in message and bad_path in message and reason in message
    assert _listing(manifest.parent / "out") == []
    report = ingest(_settings(manifest, "skip"))
    assert [(s["row"], s["path"]) for s in report.skipped] == [(2, bad_path)]
    assert reason in report.skipped[0]["reason"]
    assert str(tiny.folder) not in json.dumps(report.skipped)  # no host path


def test_gzip_bomb_is_about_one_megabyte(tiny) -> None:
    bomb = gzip_bomb(tiny.folder / "b.nii.gz")
    assert bomb.stat().st_size < 2 * 1024**2
    assert nib.load(bomb).header.get_data_shape() == (1024, 1024, 1024)


# ------------------------------------------------------------------------------ hostile manifests

GOOD = "head0.nii.gz,head,head-s0\nhead1.nii.gz,head,head-s1\nhead2.nii.gz,head,head-s2\n"


def _more_cells(tiny) -> bytes:
    return b"head3.nii.gz,head,s3,surplus,cells\n"


def _latin1(tiny) -> bytes:
    return "head3.nii.gz,head,Jos\u00e9\n".encode("latin-1")


def _nul(tiny) -> bytes:
    return b"head3.nii.gz,head,s\x003\n"


def _huge_cell(tiny) -> bytes:
    return b"head3.nii.gz,head," + b"x" * 200_000 + b"\n"


def _long_cell(tiny) -> bytes:
    return b"head3.nii.gz,head," + b"x" * 20_000 + b"\n"


HOSTILE_ROWS: dict[str, tuple[Callable, str]] = {
    "more cells than the header": (_more_cells, "has 5 cells but the header has 3"),
    "Latin-1 bytes": (_latin1, "not UTF-8 text (byte 0xe9)"),
    "NUL byte in a cell": (_nul, "NUL byte"),
    "200 kB cell": (_huge_cell, "CSV parser rejected"),
    "20 kB cell": (_long_cell, "at most 4096"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ROWS))
def test_hostile_manifest_row_fails_before_any_volume_is_read(tiny, case, monkeypatch) -> None:
    build, reason = HOSTILE_ROWS[case]
    tiny.good_rows("head", 4)
    manifest = tiny.folder / "manifest.csv"
    manifest.write_bytes(b"path,region,subject\n" + GOOD.encode() + build(tiny))
    reads = []
    monkeypatch.setattr(ingest_module, "read_volumes",
                        lambda *args: reads.append(args) or [])
    with pytest.raises(InputError) as caught:
        ingest(_settings(manifest, "fail"))
    message = str(caught.value)
    assert "manifest row 4 (line 5 of manifest.csv)" in message and reason in message
    assert reads == []  # validated before reading volumes


@pytest.mark.parametrize("case", sorted(HOSTILE_ROWS))
def test_hostile_manifest_row_is_skipped(tiny, case) -> None:
    build, reason = HOSTILE_ROWS[case]
    tiny.good_rows("head", 4)
    manifest = tiny.folder / "manifest.csv"
    manifest.write_bytes(b"path,region,subject\n" + build(tiny) + GOOD.encode())
    report = ingest(_settings(manifest, "skip"))
    assert [s["row"] for s in report.skipped] == [1] and reason in report.skipped[0]["reason"]
    assert len(json.dumps(report.skipped)) < 2000  # a 200 kB cell is not copied around
    assert report.n_volumes == 3


def test_latin1_header_is_one_clear_error(tiny) -> None:
    manifest = tiny.folder / "manifest.csv"
    manifest.write_bytes("path,region,subject,r\u00e9gion\n".encode("latin-1") + GOOD.encode())
    for mode in ("fail", "skip"):
        with pytest.raises(InputError, match="save the file as UTF-8"):
            ingest(_settings(manifest, mode))


# ------------------------------------------------------------------------------------ duplicates

def _duplicates(tiny) -> Path:
    rows = tiny.good_rows("head", 3)
    (tiny.folder / "copy.nii.gz").write_bytes((tiny.folder / "head1.nii.gz").read_bytes())
    rows += [("head0.nii.gz", "head", "head-s0"),  # the same row twice
             ("./head2.nii.gz", "head", "other-subject"),  # the same file, another subject
             ("copy.nii.gz", "head", "head-s9")]  # the same content under another name
    return tiny.manifest(rows)


def test_duplicates_are_refused(tiny) -> None:
    with pytest.raises(InputError, match=r"manifest row 4 .*duplicate: it is the same file as "
                                         r"row 1 \(head0.nii.gz\)"):
        ingest(_settings(_duplicates(tiny), "fail"))


def test_duplicates_keep_the_first_under_skip(tiny) -> None:
    report = ingest(_settings(_duplicates(tiny), "skip"))
    reasons = {s["row"]: s["reason"] for s in report.skipped}
    assert sorted(reasons) == [4, 5, 6]
    assert "under another subject" in reasons[5]
    assert "same content as row 2 (head1.nii.gz)" in reasons[6]
    assert report.n_volumes == 3
    paths = [v["path"] for v in SliceStore(report.out).volumes()]
    assert sorted(paths) == ["head0.nii.gz", "head1.nii.gz", "head2.nii.gz"]


# --------------------------------------------------------------------- columns kept, host paths

def _manifest_with_private_columns(tiny) -> Path:
    lines = ["path,region,subject,patient_name,accession,study_date,site,notes"]
    for i, (path, region, subject) in enumerate(tiny.good_rows("head", 3)):
        lines.append(f"{path},{region},{subject},Doe^Jane{i},ACC-77{i},2019010{i},site{i},"
                     f"\"PatientID PID-555{i}, seen twice\"")
    lines.append(f"{tiny.folder / 'missing.nii.gz'},head,head-s9,Doe^John,ACC-9,20190109,x,y")
    manifest = tiny.folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_only_needed_and_named_columns_reach_the_store(tiny, capsys) -> None:
    manifest = _manifest_with_private_columns(tiny)
    out = tiny.folder / "s.h5"
    args = ["ingest", "--manifest", str(manifest), "--out", str(out), "--size", "32",
            "--on-error", "skip"]
    assert main(args) == 0
    capsys.readouterr()  # the summary names --out, which is fine
    assert main(["store-info", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    blob = out.read_bytes() + printed.encode()
    for secret in (b"Doe^Ja", b"ACC-77", b"2019010", b"PID-555", b"site0",
                   str(tiny.folder).encode()):
        assert secret not in blob
    assert {v["path"]: v["metadata"] for v in SliceStore(out).volumes()} == {
        f"head{i}.nii.gz": {} for i in range(3)}
    assert main([*args, "--keep-columns", "site"]) == 0
    assert {v["path"]: v["metadata"] for v in SliceStore(out).volumes()} == {
        f"head{i}.nii.gz": {"site": f"site{i}"} for i in range(3)}


def test_keep_columns_must_name_extra_columns(tiny) -> None:
    manifest = _manifest_with_private_columns(tiny)
    with pytest.raises(InputError, match=r"names \['scanner'\], but manifest manifest.csv has"):
        ingest(_settings(manifest, "skip", keep_columns=("scanner",)))
    with pytest.raises(InputError, match="ingest uses itself"):
        ingest(_settings(manifest, "skip", keep_columns=("subject",)))


def test_no_patient_field_reaches_store_info_or_skipped_list(tiny, capsys) -> None:
    rows = tiny.good_rows("head", 3)
    tiny.dicom_series("series")
    rows += [("series", "head", "dicom-subject"), ("iop", "head", "bad")]
    _dicom_series_with(tiny, "iop", 0x00200037, [0.0] * 6)
    out = tiny.folder / "s.h5"
    assert main(["ingest", "--manifest", str(tiny.manifest(rows)), "--out", str(out),
                 "--size", "32", "--on-error", "skip"]) == 0
    ingest_printed = capsys.readouterr()
    assert main(["store-info", str(out), "--json"]) == 0
    info = capsys.readouterr().out
    assert json.loads(info)["skipped"][0]["path"] == "iop"
    blob = out.read_bytes() + (ingest_printed.out + ingest_printed.err + info).encode()
    for secret in (b"Secret", b"SECRET-ID-42", b"19990101"):
        assert secret not in blob


# ---------------------------------------------------------------------------- outside the root

def _outside(tiny) -> tuple[Path, Path]:
    """A root folder with 3 good volumes, and a volume outside it."""
    root = tiny.folder / "root"
    root.mkdir()
    inner = type(tiny)(root)
    rows = inner.good_rows("head", 3)
    outside = tiny.nifti("outside.nii.gz", tiny.phantom(seed=9))
    return root, outside, rows


def _nhdr_to(root: Path, target: Path) -> str:
    (root / "evil.nhdr").write_text(
        "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 4\nencoding: raw\n"
        f"data file: {target}\n\n")
    return "evil.nhdr"


def _with_row(root: Path, rows, path: str) -> Path:
    manifest = root / "manifest.csv"
    rows = [*rows, (path, "head", "outsider")]
    manifest.write_text("path,region,subject\n" + "".join(",".join(r) + "\n" for r in rows))
    return manifest


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "nhdr", "dicom link"])
def test_reading_outside_the_root_is_refused(tiny, kind: str) -> None:
    root, outside, rows = _outside(tiny)
    secret = tiny.folder / "secret.raw"
    secret.write_bytes(bytes(range(256)))
    if kind == "dotdot":
        path = "../outside.nii.gz"
    elif kind == "absolute":
        path = str(outside)
    elif kind == "symlink":
        (root / "link.nii.gz").symlink_to(outside)
        path = "link.nii.gz"
    elif kind == "nhdr":
        path = _nhdr_to(root, secret)
    else:
        series = tiny.dicom_series("root/series")
        (series / "zz.dcm").symlink_to(secret)
        path = "series"
    manifest = _with_row(root, rows, path)
    reason = "data file' points outside" if kind == "nhdr" else "outside the root folder"
    with pytest.raises(InputError, match="allow-outside-root") as caught:
        ingest(_settings(manifest, "fail"))
    assert reason in str(caught.value)
    report = ingest(_settings(manifest, "skip"))
    assert [s["row"] for s in report.skipped] == [4] and reason in report.skipped[0]["reason"]
    assert str(tiny.folder) not in json.dumps(report.skipped) + report.out.read_text(
        errors="ignore")


def test_allow_outside_root_reads_there(tiny) -> None:
    root, outside, rows = _outside(tiny)
    manifest = _with_row(root, rows, "../outside.nii.gz")
    report = ingest(_settings(manifest, "fail", allow_outside_root=True))
    assert report.n_volumes == 4
    assert "../outside.nii.gz" in [v["path"] for v in SliceStore(report.out).volumes()]


def test_empty_trailing_cells_are_harmless(tiny) -> None:
    """Spreadsheet exports often end rows with a comma; only non-empty surplus cells are bad."""
    rows = tiny.good_rows("head", 3)
    manifest = tiny.folder / "manifest.csv"
    manifest.write_text("path,region,subject\n" + "".join(",".join(r) + ",,\n" for r in rows))
    assert ingest(_settings(manifest, "fail")).n_volumes == 3
