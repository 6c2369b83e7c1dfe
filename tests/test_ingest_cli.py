"""`mri-tune ingest` options end to end on tiny files: slices column, 4D frames, planes, split."""

from __future__ import annotations

import json
from pathlib import Path

from mri_tune.cli import main
from mri_tune.data.store import SliceStore


def _ingest(args: list[str], capsys) -> dict:
    assert main(["ingest", *args]) == 0
    capsys.readouterr()
    out = Path(args[args.index("--out") + 1])
    assert main(["store-info", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_slices_column_feeds_two_regions_from_one_volume(tiny, capsys) -> None:
    rows = []
    for i in range(3):
        tiny.nifti(f"body{i}.nii.gz", tiny.phantom((24, 24, 20), seed=i))
        rows.append(f"body{i}.nii.gz,head,s{i},0:8\n")
        rows.append(f"body{i}.nii.gz,spine,s{i},8:\n")
    manifest = tiny.folder / "m.csv"
    manifest.write_text("path,region,subject,slices\n" + "".join(rows))
    info = _ingest(["--manifest", str(manifest), "--out", str(tiny.folder / "s.h5"),
                    "--size", "16"], capsys)
    assert info["classes"] == ["head", "spine"]
    volumes = SliceStore(tiny.folder / "s.h5").volumes()
    assert sorted(v["n_slices"] for v in volumes if v["region"] == "head") == [8, 8, 8]
    assert sorted(v["n_slices"] for v in volumes if v["region"] == "spine") == [12, 12, 12]
    for split in ("train", "validation", "test"):  # one subject per split, both regions
        assert len(info["subjects"][split]) == 1
        assert all(n > 0 for n in info["splits"][split].values())


def test_max_frames_planes_and_seed(tiny, capsys) -> None:
    rows = []
    for i in range(4):
        tiny.nifti(f"f{i}.nii.gz", tiny.phantom((20, 20, 20, 5), seed=i))
        rows.append((f"f{i}.nii.gz", "head", f"s{i}"))
    manifest = tiny.manifest(rows)
    base = ["--manifest", str(manifest), "--size", "16", "--split", "0.5,0.25,0.25"]
    one = _ingest([*base, "--out", str(tiny.folder / "a.h5"), "--max-frames", "1"], capsys)
    three = _ingest([*base, "--out", str(tiny.folder / "b.h5"), "--planes", "all"], capsys)
    assert three["n_volumes"] == 3 * one["n_volumes"] == 12
    assert set(one["planes"]["train"]) == {"axial", "coronal", "sagittal"}
    assert one["planes"]["train"]["coronal"] == 0 < three["planes"]["train"]["coronal"]
    assert one["subjects"] == three["subjects"]  # same seed, same split
    other = _ingest([*base, "--out", str(tiny.folder / "c.h5"), "--seed", "5"], capsys)
    assert sorted(sum(other["subjects"].values(), [])) == ["s0", "s1", "s2", "s3"]
    assert three["provenance"]["preprocessing"]["planes"] == "all"


def test_field_of_view_channel_is_stored_and_reproduced_by_predicts_reader(tiny, capsys) -> None:
    from mri_tune_datasets.preprocess import volume_file_to_slices

    rows = [(tiny.nifti(f"v{i}.nii.gz", tiny.phantom((24, 24, 12), seed=i)).name, "head", f"s{i}")
            for i in range(3)]
    manifest = tiny.manifest(rows)
    out = tiny.folder / "fov.h5"
    info = _ingest(["--manifest", str(manifest), "--out", str(out), "--size", "16",
                    "--field-of-view", "96"], capsys)
    assert info["provenance"]["preprocessing"]["field_of_view_mm"] == 96.0
    store = SliceStore(out)
    assert store.channels == 2
    volume = store.volumes()[0]
    (batch,) = volume_file_to_slices(tiny.folder / volume["path"], store.preprocessing)
    stored = store.load_split(volume["split"]).images.numpy()
    assert stored.shape[1:] == batch.images.shape[1:] == (2, 16, 16)
    assert any((stored[i] == batch.images[0]).all() for i in range(len(stored)))
    assert not batch.images[0, 1, :4].any()  # 24 mm of a 96 mm field: a quarter, centred
