"""Readers and preprocessing on tiny synthetic files: orientation, geometry, slicing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mri_tune.errors import InputError
from mri_tune_datasets.preprocess import (
    Preprocessing,
    canonicalise,
    parse_slices,
    resize_slices,
    volume_file_to_slices,
)
from mri_tune_datasets.readers import acquisition_axis, read_volumes


def _marker_volume(shape=(20, 16, 10), at=(2, 8, 5)) -> np.ndarray:
    data = np.ones(shape, np.float32) * 10
    data += np.arange(shape[2], dtype=np.float32)[None, None, :]  # not constant
    data[at] = 5000.0
    return data


def test_dicom_lps_becomes_ras(tiny) -> None:
    """A bright voxel at the patient's left (DICOM +x, LPS) lands at low canonical x (RAS: x
    grows to the Right), and one at the patient's posterior (DICOM +y) at low canonical y."""
    data = _marker_volume((20, 16, 6), at=(18, 14, 3))  # (cols, rows, slices): +x, +y corner
    for k in range(6):
        tiny.dicom(tiny.folder / "s" / f"{k}.dcm", data[:, :, k].T, (0.0, 0.0, 2.0 * k),
                   instance=k + 1)
    (raw,) = read_volumes(tiny.folder / "s", max_frames=3)
    volume = canonicalise(raw, None, Preprocessing())
    x, y, z = np.unravel_index(np.argmax(volume.data), volume.data.shape)
    assert (x, y, z) == (20 - 1 - 18, 16 - 1 - 14, 3)
    assert volume.spacing == pytest.approx((1.0, 1.0, 2.0))
    assert volume.acquisition_plane == "axial"


def test_nifti_orientation_is_made_canonical(tiny) -> None:
    data = _marker_volume(at=(2, 3, 4))
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])  # LAI storage
    (raw,) = read_volumes(tiny.nifti("lai.nii.gz", data, flip), max_frames=1)
    volume = canonicalise(raw, None, Preprocessing())
    assert np.unravel_index(np.argmax(volume.data), volume.data.shape) == (17, 3, 5)


def test_mixed_orientation_series_is_split_by_orientation(tiny) -> None:
    folder = tiny.folder / "localizer"
    orientations = {"sag": (0, 1, 0, 0, 0, -1), "cor": (1, 0, 0, 0, 0, -1),
                    "ax": (1, 0, 0, 0, 1, 0)}
    instance = 0
    for name, iop in orientations.items():
        normal = np.cross(iop[:3], iop[3:])
        for k in range(3):
            instance += 1
            pixels = TinyPixels.make(16, 16, instance)
            tiny.dicom(folder / f"{name}{k}.dcm", pixels, tuple(normal * 7.0 * k), iop,
                       instance=instance)
    raws = read_volumes(folder, max_frames=3)
    assert sorted(r.part for r in raws) == ["orientation 0", "orientation 1", "orientation 2"]
    planes = sorted(canonicalise(r, None, Preprocessing()).acquisition_plane for r in raws)
    assert planes == ["axial", "coronal", "sagittal"]
    assert all(r.image.shape[2] == 3 for r in raws)


class TinyPixels:
    @staticmethod
    def make(rows: int, cols: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(10, 1000, (rows, cols))


def test_repeated_positions_become_frames(tiny) -> None:
    """A diffusion series stores each position once per b-value: one stack per repeat."""
    folder = tiny.folder / "dwi"
    for b in range(4):
        for k in range(5):
            tiny.dicom(folder / f"b{b}_{k}.dcm", TinyPixels.make(12, 12, 10 * b + k),
                       (0.0, 0.0, 3.0 * k), instance=b * 5 + k + 1)
    raws = read_volumes(folder, max_frames=2)
    assert [r.part for r in raws] == ["", "frame 1"]
    assert all(r.image.shape == (12, 12, 5) for r in raws)


def test_multiframe_dicom_without_geometry(samples_dir) -> None:
    (raw,) = read_volumes(samples_dir / "pydicom_data" / "emri_small.dcm", max_frames=3)
    assert raw.image.shape == (64, 64, 10)
    assert raw.notes and "identity assumed" in raw.notes[0]


def test_nrrd_lps_space_directions(tiny) -> None:
    import nrrd

    data = _marker_volume(at=(2, 3, 4))
    header = {"space": "left-posterior-superior",
              "space directions": np.diag([1.0, 1.0, 4.0]), "space origin": np.zeros(3)}
    path = tiny.folder / "v.nrrd"
    nrrd.write(str(path), data, header, index_order="F")
    (raw,) = read_volumes(path, max_frames=1)
    volume = canonicalise(raw, None, Preprocessing())
    assert np.unravel_index(np.argmax(volume.data), volume.data.shape) == (17, 12, 4)
    assert volume.spacing == pytest.approx((1.0, 1.0, 4.0))


def test_4d_frames_are_evenly_spaced(tiny) -> None:
    path = tiny.nifti("4d.nii.gz", tiny.phantom((12, 12, 6, 18)))
    assert [r.part for r in read_volumes(path, max_frames=3)] == ["frame 0", "frame 8",
                                                                 "frame 17"]
    assert [r.part for r in read_volumes(path, max_frames=1)] == ["frame 0"]
    single = tiny.nifti("4d1.nii.gz", tiny.phantom((12, 12, 6, 1)))
    assert [r.part for r in read_volumes(single, max_frames=3)] == [""]


def test_implausible_spacing_is_capped(tiny) -> None:
    affine = np.diag([2.0, 2.0, 53.0, 1.0])
    (raw,) = read_volumes(tiny.nifti("s0.nii.gz", tiny.phantom((32, 32, 10)), affine), 1)
    volume = canonicalise(raw, None, Preprocessing())
    assert volume.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert "implausible spacing 53 mm" in volume.notes[0]


def test_thin_slab_keeps_only_its_acquisition_plane(tiny) -> None:
    affine = np.diag([2.0, 2.0, 5.0, 1.0])  # 5 slices of 5 mm, 128 mm wide: strips elsewhere
    path = tiny.nifti("slab.nii.gz", tiny.phantom((64, 64, 5)), affine)
    batches = volume_file_to_slices(path, Preprocessing(size=32, planes="all"))
    assert [b.plane for b in batches] == ["axial"]
    cube = tiny.nifti("cube.nii.gz", tiny.phantom((32, 32, 32)))
    planes = [b.plane for b in volume_file_to_slices(cube, Preprocessing(size=32, planes="all"))]
    assert planes == ["axial", "coronal", "sagittal"]


def test_resize_preserves_physical_aspect() -> None:
    images = np.ones((1, 10, 40), np.float32)  # 10 rows of 2 mm x 40 cols of 1 mm: 20 x 40 mm
    out = resize_slices(images, (2.0, 1.0), 32)
    rows = np.flatnonzero(out[0].max(axis=1) > 0)
    assert len(rows) == 16 and rows[0] == 8  # half the height, centred
    assert out.shape == (1, 32, 32)


def test_field_of_view_draws_every_slice_at_one_physical_scale() -> None:
    small = np.ones((1, 20, 20), np.float32)  # 100 x 100 mm
    large = np.ones((1, 50, 50), np.float32)  # 400 x 400 mm
    fit = [resize_slices(x, (s, s), 32) for x, s in ((small, 5.0), (large, 8.0))]
    assert all((f[0] > 0).all() for f in fit)  # fit: both fill the frame
    fixed_small, fixed_large = (resize_slices(x, (s, s), 32, field_of_view_mm=200.0)
                                for x, s in ((small, 5.0), (large, 8.0)))
    rows = np.flatnonzero(fixed_small[0].max(axis=1) > 0)
    assert len(rows) == 16 and rows[0] == 8  # 100 mm of a 200 mm field: half, centred
    assert (fixed_large[0] > 0).all()  # 400 mm cropped to the central 200 mm
    ramp = np.tile(np.arange(50, dtype=np.float32), (1, 50, 1))
    centre = resize_slices(ramp, (8.0, 8.0), 32, field_of_view_mm=200.0)[0]
    assert abs(centre.mean() - ramp.mean()) < 1.0  # the crop is centred
    with pytest.raises(InputError, match="field_of_view_mm"):
        Preprocessing(field_of_view_mm=5.0)


def test_field_of_view_adds_a_fixed_scale_channel(tiny) -> None:
    path = tiny.nifti("cube.nii.gz", tiny.phantom((32, 32, 32)))  # 32 mm
    fit = volume_file_to_slices(path, Preprocessing(size=32))[0]
    both = volume_file_to_slices(path, Preprocessing(size=32, field_of_view_mm=128.0))[0]
    assert both.images.shape == (len(fit.images), 2, 32, 32)  # the same slices, thinned alike
    assert (both.images[:, 0] == fit.images).all()  # channel 0: the fitted slice, unchanged
    fixed = both.images[:, 1]
    assert not fixed[:, :8].any() and fixed[:, 12:20].any()  # 32 of 128 mm: a quarter, centred
    assert Preprocessing(field_of_view_mm=128.0).channels == 2 == 1 + Preprocessing().channels


def test_slices_column_crops_the_acquisition_axis(tiny) -> None:
    path = tiny.nifti("long.nii.gz", tiny.phantom((24, 24, 20)))
    (raw,) = read_volumes(path, 1)
    assert canonicalise(raw, parse_slices("5:12"), Preprocessing()).data.shape == (24, 24, 7)
    with pytest.raises(InputError, match="select nothing"):
        canonicalise(raw, parse_slices("30:40"), Preprocessing())
    with pytest.raises(InputError, match="start:stop"):
        parse_slices("5-12")


def test_acquisition_axis_heuristic() -> None:
    assert acquisition_axis((128, 9, 128), (3, 5, 3), declared=2) == 1  # thick slices win
    assert acquisition_axis((38, 257, 201), (1, 1, 1), declared=2) == 0  # a thin slab
    assert acquisition_axis((64, 64, 60), (1, 1, 1), declared=0) == 0
    assert acquisition_axis((64, 64, 60), (1, 1, 1)) == 2


def test_preprocessing_round_trips_and_validates() -> None:
    prep = Preprocessing(size=64, planes="all")
    assert Preprocessing.from_dict({**prep.to_dict(), "future_key": 1}) == prep
    with pytest.raises(InputError, match="planes"):
        Preprocessing(planes="oblique")
    with pytest.raises(InputError, match="size"):
        Preprocessing(size=4)


def test_constant_edge_slices_are_dropped(tiny) -> None:
    data = tiny.phantom((24, 24, 10))
    data[:, :, :2] = 0.0  # empty edge slices, as zero-padded exports have
    batches = volume_file_to_slices(tiny.nifti("pad.nii.gz", data), Preprocessing(size=24))
    assert batches[0].slice_index.tolist() == list(range(2, 10))


def test_canonical_affine_of_example_is_ras(samples_dir) -> None:
    (raw,) = read_volumes(samples_dir / "sct_testing_data" / "t2.nii.gz", 1)  # stored PSR
    assert nib.aff2axcodes(raw.image.affine) == ("P", "S", "R")
    volume = canonicalise(raw, None, Preprocessing())
    assert volume.data.shape == (52, 60, 55)
