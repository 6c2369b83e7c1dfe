"""Volume -> slices: canonical RAS orientation, slicing, aspect-preserving resize, normalisation.

Symbols (one volume):
    data        (X, Y, Z) float32, voxel intensities in the canonical RAS frame
                (axis 0 towards patient Right, 1 Anterior, 2 Superior; `as_closest_canonical`)
    spacing     (3,) voxel size in mm along X, Y, Z
    plane       axial (slices along Z), coronal (along Y), sagittal (along X)
    image       (H, W) one slice: axial W = X, H = Y with anterior at the top; coronal W = X,
                H = Z with superior at the top; sagittal W = Y, H = Z with superior at the top
    images      (n, size, size) uint8, after resize and intensity normalisation; with a field
                of view, (n, 2, size, size): channel 0 as without, channel 1 the same slice at
                the fixed physical scale

Choices (docs/INGEST.md explains each):
- Intensities are mapped to 0..255 per volume by its `low_percentile` and `high_percentile`
  (robust to a few hot voxels), computed once per 3D volume so that slices keep their relative
  brightness.
- A slice is resized preserving its physical aspect ratio (voxel spacing), then padded to square,
  so that anisotropic voxels do not distort anatomy; its longer side fills the image ("fit").
  With `field_of_view_mm` > 0 a second channel holds the same slice at one physical scale for
  every slice (`size` pixels span that many mm, centred, cropped or padded): the size of the
  anatomy there is its size in the body, which "fit" erases (a head and an abdomen fill the
  frame alike), while channel 0 keeps the detail of small fields of view (a cropped cord).
  Measured on leave-one-site-out: benchmarks/RESULTS_generalization.md.
- With planes="all", a plane orthogonal to the acquisition whose image would be a thin strip
  (short side / long side < `min_orthogonal_aspect`, e.g. 5 slices of 5 mm) is skipped.
- Along each plane's axis, slices closer together than `min_slice_gap_px` output pixels are
  thinned (every k-th kept): denser slices repeat each other at the output resolution and would
  let one high-resolution volume outweigh others.
- Slices that are (nearly) constant after normalisation (std below `min_slice_std` grey levels:
  empty edge slices, zero padding) are dropped; `slice_index` keeps each kept slice's position.
- A voxel spacing above `max_spacing_mm` is a header error (dipy's S0_10slices claims 53 mm):
  it is replaced by the median of the other spacings and noted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from mri_tune_core import paper
from mri_tune_core.errors import InputError
from mri_tune_core.store_format import PLANES
from mri_tune_datasets.readers import RawVolume, read_volumes

logger = logging.getLogger(__name__)

PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
"""Canonical RAS axis that a plane's slices are taken along."""
_AXIS_PLANE = {axis: plane for plane, axis in PLANE_AXIS.items()}
# Percentiles of volumes larger than this are estimated on a regular sub-sample (speed only).
_PERCENTILE_SAMPLE = 2_000_000


@dataclass(frozen=True)
class Preprocessing:
    """Every parameter needed to turn a volume file into store slices exactly as ingest did."""

    size: int = paper.IMAGE_SIZE
    planes: str = "acquisition"
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    min_orthogonal_aspect: float = 0.25
    min_slice_std: float = 2.0
    max_spacing_mm: float = 20.0
    max_frames: int = 3
    min_slice_gap_px: float = 1.0
    field_of_view_mm: float = 0.0  # > 0: a second channel at this physical field of view

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 1024:
            raise InputError(f"size must be an integer in [8, 1024]; got {self.size}; "
                             "use e.g. --size 128")
        if self.planes not in ("acquisition", "all"):
            raise InputError(f"planes must be 'acquisition' or 'all'; got {self.planes!r}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise InputError("percentiles must satisfy 0 <= low < high <= 100; got "
                             f"{self.low_percentile}, {self.high_percentile}")
        if self.max_frames < 1:
            raise InputError(f"max_frames must be >= 1; got {self.max_frames}")
        if not (self.field_of_view_mm == 0 or 10 <= self.field_of_view_mm <= 2000):
            raise InputError(f"field_of_view_mm must be 0 (fit each slice) or in [10, 2000] mm; "
                             f"got {self.field_of_view_mm}; e.g. --field-of-view 400")

    @property
    def channels(self) -> int:
        """Image channels per slice: the fitted slice, plus the fixed-scale one."""
        return 2 if self.field_of_view_mm else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """Build from a store's `preprocessing` dict (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class CanonicalVolume:
    """A 3D volume in the canonical RAS frame; `acquisition_axis` is its slice axis there."""

    data: np.ndarray  # (X, Y, Z) float32
    spacing: tuple[float, float, float]
    acquisition_axis: int
    notes: tuple[str, ...] = ()

    @property
    def acquisition_plane(self) -> str:
        return _AXIS_PLANE[self.acquisition_axis]


@dataclass(frozen=True)
class SliceBatch:
    """The kept slices of one volume along one plane."""

    images: np.ndarray  # (n, size, size) uint8, or (n, channels, size, size)
    plane: str
    slice_index: np.ndarray  # (n,) int32, index along the plane's axis in the canonical volume
    part: str = ""


def parse_slices(text: str) -> slice | None:
    """Manifest `slices` cell 'a:b' (Python half-open, either end optional) -> slice; '' -> None."""
    text = (text or "").strip()
    if not text:
        return None
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError as err:
        raise InputError(f"slices must look like 'start:stop' (e.g. 0:40); got {text!r}") from err
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise InputError(f"slices must be non-negative indices; got {text!r}")
    return slice(start, stop)


def canonicalise(raw: RawVolume, slices: slice | None, prep: Preprocessing) -> CanonicalVolume:
    """Crop the file's acquisition axis to `slices`, check the voxels, reorient to RAS."""
    image = raw.image
    if slices is not None:
        n = image.shape[raw.slice_axis]
        start = slices.start or 0
        if start >= n or (slices.stop is not None and slices.stop <= start):
            raise InputError(f"slices {slices.start}:{slices.stop} select nothing of a volume with "
                             f"{n} slices along its acquisition axis; fix the manifest's slices")
        index = [slice(None)] * 3
        index[raw.slice_axis] = slices
        image = image.slicer[tuple(index)]
    if 0 in image.shape:
        raise InputError(f"the volume is empty (shape {image.shape}); remove it from the manifest")
    data = np.asarray(image.dataobj, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InputError(f"{bad} of {data.size} voxels are not finite (NaN or inf); voxels must "
                         "be finite: fix the export or remove the volume")
    if float(data.max()) == float(data.min()):
        raise InputError(f"the volume is constant (every voxel = {float(data.min()):g}); "
                         "it holds no image, remove it from the manifest")
    acquisition_axis = int(nib.io_orientation(image.affine)[raw.slice_axis, 0])
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, image.affine))
    spacing, notes = _plausible_spacing(np.linalg.norm(canonical.affine[:3, :3], axis=0), prep)
    return CanonicalVolume(np.asarray(canonical.dataobj, dtype=np.float32), spacing,
                           acquisition_axis, raw.notes + notes)


def _plausible_spacing(spacing: np.ndarray, prep: Preprocessing) -> tuple[tuple, tuple]:
    """Replace an implausible voxel spacing (0, non-finite, > max_spacing_mm) by the median of
    the plausible ones: a header error must not stretch slices into thin strips."""
    ok = np.isfinite(spacing) & (spacing > 0) & (spacing <= prep.max_spacing_mm)
    if ok.all():
        return tuple(float(s) for s in spacing), ()
    fill = float(np.median(spacing[ok])) if ok.any() else 1.0
    notes = tuple(f"implausible spacing {float(s):g} mm on axis {i} replaced by {fill:g} mm"
                  for i, s in enumerate(spacing) if not ok[i])
    fixed = np.where(ok, spacing, fill)
    return tuple(float(s) for s in fixed), notes


def normalise(data: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """(X, Y, Z) -> (X, Y, Z) float32 in [0, 1] by the volume's robust percentiles."""
    sample = data.reshape(-1)
    if sample.size > _PERCENTILE_SAMPLE:
        sample = sample[:: sample.size // _PERCENTILE_SAMPLE + 1]
    low, high = np.percentile(sample, [prep.low_percentile, prep.high_percentile])
    if high <= low:  # mostly-constant volume (e.g. a few bright voxels): fall back to the range
        low, high = float(data.min()), float(data.max())
    return np.clip((data - low) / (high - low), 0.0, 1.0, dtype=np.float32)


def plane_images(volume: CanonicalVolume, plane: str, prep: Preprocessing
                 ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Slices of `volume.data` along `plane` -> ((n, H, W) view, (n,) slice indices,
    (row, column) spacing in mm), thinned to `prep.min_slice_gap_px` output pixels."""
    axis = PLANE_AXIS[plane]
    first, second = (a for a in range(3) if a != axis)
    extent = max(volume.data.shape[first] * volume.spacing[first],
                 volume.data.shape[second] * volume.spacing[second])
    # 1e-6: a spacing of exactly half an output pixel counts as half (float rounding).
    step = max(1, int(prep.min_slice_gap_px * extent / prep.size / volume.spacing[axis] + 1e-6))
    index = np.arange(0, volume.data.shape[axis], step)
    stack = np.moveaxis(volume.data, axis, 0)[index]  # (n, first, second)
    images = stack.transpose(0, 2, 1)[:, ::-1, :]  # H = second axis, anterior/superior on top
    return images, index, (volume.spacing[second], volume.spacing[first])


def resize_slices(images: np.ndarray, spacing: tuple[float, float], size: int,
                  field_of_view_mm: float = 0.0) -> np.ndarray:
    """(n, h, w) float -> (n, size, size) float, the physical aspect ratio preserved and the
    image centred. `field_of_view_mm` 0: the longer physical side fills `size`, the shorter is
    padded with zeros; > 0: `size` pixels span that many mm, and a side longer than that is
    cropped (centred), a shorter one padded."""
    n, h, w = images.shape
    extent_h, extent_w = h * spacing[0], w * spacing[1]
    scale = size / (field_of_view_mm or max(extent_h, extent_w))
    th, tw = max(1, round(extent_h * scale)), max(1, round(extent_w * scale))
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    antialias = th < h or tw < w
    x = torch.nn.functional.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False,
                                        antialias=antialias)[:, 0]
    out = torch.zeros((n, size, size), dtype=torch.float32)
    rows, src_rows = _centred(th, size)
    cols, src_cols = _centred(tw, size)
    out[:, rows, cols] = x[:, src_rows, src_cols]
    return out.numpy()


def _centred(length: int, size: int) -> tuple[slice, slice]:
    """Where a centred run of `length` pixels lands in `size` (destination, source slices)."""
    if length <= size:
        start = (size - length) // 2
        return slice(start, start + length), slice(0, length)
    start = (length - size) // 2
    return slice(0, size), slice(start, start + size)


def planes_of(volume: CanonicalVolume, prep: Preprocessing) -> list[str]:
    """The planes to slice: the acquisition plane, plus (planes="all") each orthogonal plane
    whose images are not thin strips."""
    if prep.planes == "acquisition":
        return [volume.acquisition_plane]
    kept = []
    extent = np.asarray(volume.data.shape) * np.asarray(volume.spacing)
    for plane in PLANES:
        in_plane = [extent[a] for a in range(3) if a != PLANE_AXIS[plane]]
        aspect = min(in_plane) / max(in_plane)
        if plane == volume.acquisition_plane or aspect >= prep.min_orthogonal_aspect:
            kept.append(plane)
    return kept


def volume_to_slices(volume: CanonicalVolume, prep: Preprocessing, part: str = ""
                     ) -> list[SliceBatch]:
    """One canonical volume -> one SliceBatch per plane (planes with no kept slice omitted)."""
    unit = normalise(volume.data, prep)
    unit_volume = CanonicalVolume(unit, volume.spacing, volume.acquisition_axis, volume.notes)
    batches = []
    for plane in planes_of(volume, prep):
        images, index, spacing = plane_images(unit_volume, plane, prep)
        quantised = _quantise(resize_slices(images, spacing, prep.size))
        keep = quantised.reshape(len(quantised), -1).std(axis=1) >= prep.min_slice_std
        if not keep.any():
            continue
        kept = quantised[keep]
        if prep.field_of_view_mm:  # the fixed-scale channel, of the kept slices only
            fixed = resize_slices(images[keep], spacing, prep.size, prep.field_of_view_mm)
            kept = np.stack([kept, _quantise(fixed)], axis=1)
        batches.append(SliceBatch(kept, plane, index[keep].astype(np.int32), part))
    return batches


def _quantise(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def volume_file_to_slices(path: Path | str, preprocessing: Preprocessing | Mapping[str, Any],
                          slices: slice | None = None) -> list[SliceBatch]:
    """Read a volume file (or DICOM series folder) and preprocess it exactly as ingest did.

    `preprocessing` is a `Preprocessing` or the dict `SliceStore.preprocessing` returns.
    Returns one SliceBatch per (3D volume of the file, plane); `part` tells the volumes of a 4D
    file or of a mixed-orientation series apart. Raises InputError for an unusable file.
    """
    prep = (preprocessing if isinstance(preprocessing, Preprocessing)
            else Preprocessing.from_dict(preprocessing))
    path = Path(path)
    batches = []
    for raw in read_volumes(path, prep.max_frames):
        try:
            volume = canonicalise(raw, slices, prep)
        except InputError as err:
            where = f"{path} ({raw.part})" if raw.part else str(path)
            raise InputError(f"{where}: {err}") from err
        batches.extend(volume_to_slices(volume, prep, raw.part))
    return batches
