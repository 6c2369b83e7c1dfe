"""Volume readers: NIfTI (nibabel), DICOM series folders and single/multi-frame files, NRRD.

Every reader returns `RawVolume`s: a 3D `nibabel.Nifti1Image` whose affine maps voxel indices to
RAS millimetres (the NIfTI world frame), in the file's own voxel order, so that the manifest's
`slices` column (which indexes the file's slice axis, axis 2) can be applied before reorientation.
Reorientation to the canonical RAS frame happens in `preprocess`.

Privacy: from a DICOM file only geometry (orientation, position, spacing, size), pixel data,
rescale values and `Modality` are read. No patient, institution or date field is ever copied into
a returned object, a log line or an error message.

Header sizes are checked against `MAX_VOLUME_VOXELS` and `MAX_VOLUME_BYTES` before any pixel
array is allocated, so a header claiming absurd dimensions (or a 1 MB `.nii.gz` that would expand
to 1 GiB) is rejected cheaply. DICOM geometry (orientation, position, spacing, rescale values) is
checked to be numbers that make a valid affine, so a corrupt header is an InputError.

Confinement: given `root`, a reader refuses to open a file outside it that the input points to
(an NRRD header's `data file`, a symbolic link inside a DICOM series folder).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom

from mri_tune_core.errors import InputError

logger = logging.getLogger(__name__)

MAX_VOLUME_BYTES = 2 * 1024**3
"""Largest voxel array (as stored in the file) that a reader will allocate: 2 GiB."""
MAX_VOLUME_VOXELS = 2**27
"""Most voxels one file may hold (all frames): 512^3, i.e. 512 MiB as the float32 working copy
that preprocessing makes (and a few more copies of it while reorienting and resizing)."""

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr")
NRRD_SUFFIXES = (".nrrd", ".nhdr")

# DICOM LPS -> NIfTI RAS: negate x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Orientation cosines equal to this many decimals are one orientation group (localizers).
_ORIENTATION_DECIMALS = 3
# Direction cosines stored with few decimals are still unit and orthogonal within this.
_COSINE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class RawVolume:
    """One 3D volume as read: `image` (X, Y, Z) in file voxel order, affine voxel -> RAS mm.

    `part` names the volume inside its file ("" for a plain 3D file, "frame 3" for the 4th
    volume of a 4D file, "orientation 1" for the 2nd orientation group of a localizer series).
    `slice_axis` is the file voxel axis the slices were acquired along (see `acquisition_axis`).
    `notes` are geometry remarks worth keeping (e.g. "no geometry in header: identity assumed").
    """

    image: nib.Nifti1Image
    format: str
    part: str
    source_shape: tuple[int, ...]
    slice_axis: int = 2
    notes: tuple[str, ...] = ()


def acquisition_axis(shape: tuple[int, ...], spacing: tuple[float, ...],
                     declared: int | None = None) -> int:
    """The file voxel axis (0, 1, 2) the slices were acquired along.

    In order: the one axis whose spacing is clearly the largest (thick slices: 128x9x128 voxels
    of 3x5x3 mm are 9 coronal slices, whatever a resampled header's dim_info says); else the one
    axis with clearly fewer voxels (a sagittal slab of 38 x 257 x 201 at 1 mm); else the axis a
    NIfTI header declares (dim_info slice_dim); else axis 2, where DICOM stacks and most NIfTI
    exports put the slices.
    """
    spacing_arr = np.asarray(spacing[:3], dtype=float)
    order = np.argsort(spacing_arr)
    if np.all(np.isfinite(spacing_arr)) and spacing_arr[order[2]] > 1.2 * spacing_arr[order[1]]:
        return int(order[2])
    sizes = np.asarray(shape[:3], dtype=float)
    order = np.argsort(sizes)
    if sizes[order[0]] < 0.5 * sizes[order[1]]:
        return int(order[0])
    if declared is not None and 0 <= declared < 3:
        return int(declared)
    return 2


def read_volumes(path: Path, max_frames: int, root: Path | None = None) -> list[RawVolume]:
    """Read every 3D volume of `path` (a file or a DICOM series folder).

    4D inputs yield at most `max_frames` frames, evenly spaced (first and last included), because
    the frames of one acquisition (echoes, inversion times, b-values, time points) are
    near-duplicates of one anatomy: taking all of them would inflate one subject.
    Raises InputError (without the manifest row: the caller adds it) when the input is unusable,
    or when it points to a file outside `root` (None: anywhere).
    """
    if not path.exists():
        raise InputError(f"file not found: {path}; check the path (for ingest: the manifest's "
                         "path column and --root)")
    if path.is_dir():
        return _read_dicom_folder(path, max_frames, root)
    name = path.name.lower()
    if path.stat().st_size == 0:
        raise InputError(f"{path} is an empty (zero-byte) file; replace it with the real volume")
    if name.endswith(NIFTI_SUFFIXES):
        return _read_nifti(path, max_frames)
    if name.endswith(NRRD_SUFFIXES):
        return _read_nrrd(path, max_frames, root)
    return _read_dicom_files([path], path, max_frames)


def check_allocation(shape: tuple[int, ...], itemsize: int, path: Path) -> None:
    """Reject an empty volume, or a header whose voxel array would exceed MAX_VOLUME_VOXELS or
    MAX_VOLUME_BYTES, before allocating it."""
    if any(int(n) < 0 for n in shape):
        raise InputError(f"{path}: header has a negative dimension {tuple(shape)}; "
                         "the file is corrupt, re-export it")
    if any(int(n) == 0 for n in shape):
        raise InputError(f"{path}: the volume is empty (shape {tuple(int(n) for n in shape)}); "
                         "remove it from the manifest")
    n_voxels = int(np.prod([int(n) for n in shape], dtype=object))
    if n_voxels > MAX_VOLUME_VOXELS:
        raise InputError(
            f"{path}: header claims a {tuple(int(n) for n in shape)} array, {n_voxels:,} voxels "
            f"({n_voxels * 4 / 1024**3:.1f} GiB as 32-bit floats); a volume may have at most "
            f"{MAX_VOLUME_VOXELS:,} voxels ({MAX_VOLUME_VOXELS * 4 / 1024**3:.1f} GiB); the header "
            "is corrupt, or the volume must be cropped or downsampled first")
    n_bytes = n_voxels * int(itemsize)
    if n_bytes > MAX_VOLUME_BYTES:
        raise InputError(
            f"{path}: header claims a {tuple(int(n) for n in shape)} array of {itemsize}-byte "
            f"voxels ({n_bytes / 1024**3:.1f} GiB), more than the {MAX_VOLUME_BYTES / 1024**3:.0f} "
            "GiB a volume may have; the header is corrupt or the volume must be cropped first")


def _frame_indices(n_frames: int, max_frames: int) -> list[int]:
    """Evenly spaced frame indices, first and last included when max_frames >= 2."""
    if n_frames <= max_frames:
        return list(range(n_frames))
    if max_frames == 1:
        return [0]
    return sorted({round(i * (n_frames - 1) / (max_frames - 1)) for i in range(max_frames)})


def _split_frames(data: np.ndarray, affine: np.ndarray, fmt: str, max_frames: int,
                  source_shape: tuple[int, ...], declared_axis: int | None = None,
                  notes: tuple[str, ...] = ()) -> list[RawVolume]:
    """(X, Y, Z[, T...]) array -> one RawVolume per kept frame of the flattened extra axes."""
    if data.ndim < 3:
        data = data.reshape(data.shape + (1,) * (3 - data.ndim))
    frames = data.reshape(data.shape[:3] + (-1,))
    n_frames = frames.shape[3]
    spacing = tuple(np.linalg.norm(affine[:3, :3], axis=0))
    axis = acquisition_axis(frames.shape[:3], spacing, declared_axis)
    out = []
    for t in _frame_indices(n_frames, max_frames):
        image = nib.Nifti1Image(np.ascontiguousarray(frames[..., t]), affine)
        part = f"frame {t}" if n_frames > 1 else ""
        out.append(RawVolume(image, fmt, part, source_shape, axis, notes))
    return out


def _read_nifti(path: Path, max_frames: int) -> list[RawVolume]:
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.header.get_data_shape())
        itemsize = np.dtype(img.header.get_data_dtype()).itemsize
    except Exception as err:  # nibabel raises many types for corrupt headers
        raise InputError(f"{path} is not a readable NIfTI file ({type(err).__name__}: {err}); "
                         "check that it is complete (not truncated) and really NIfTI") from err
    check_allocation(shape, itemsize, path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:
        raise InputError(f"{path}: the voxel data cannot be read ({type(err).__name__}: {err}); "
                         "the file is probably truncated, re-download or re-export it") from err
    declared = None
    if hasattr(img.header, "get_dim_info"):
        declared = img.header.get_dim_info()[2]
    return _split_frames(data, img.affine, "NIfTI", max_frames, shape, declared)


def _read_nrrd(path: Path, max_frames: int, root: Path | None) -> list[RawVolume]:
    try:
        header = nrrd.read_header(str(path))
        shape = tuple(int(n) for n in header["sizes"])
        itemsize = _nrrd_itemsize(str(header["type"]))
    except Exception as err:
        raise InputError(f"{path} is not a readable NRRD file ({type(err).__name__}: {err}); "
                         "check that it is complete and really NRRD") from err
    _check_nrrd_data_file(path, header, root)
    check_allocation(shape, itemsize, path)
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as err:
        raise InputError(f"{path}: the NRRD voxel data cannot be read ({type(err).__name__}: "
                         f"{err}); the file is probably truncated, re-export it") from err
    data, affine, notes = _nrrd_geometry(np.asarray(data, dtype=np.float32), header)
    return _split_frames(data, affine, "NRRD", max_frames, shape, None, notes)


def _check_nrrd_data_file(path: Path, header: dict, root: Path | None) -> None:
    """A detached header (.nhdr) names its data file; it must lie under `root` too."""
    data_file = header.get("datafile", header.get("data file"))
    if data_file is None or root is None:
        return
    target = (path.parent / str(data_file)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InputError(
            f"{path}: the NRRD header's 'data file' points outside the root folder (the "
            "manifest's folder, or --root); ingest reads only files under the root: keep the "
            "data file beside its header, or pass --allow-outside-root if you trust this header")


def _nrrd_itemsize(nrrd_type: str) -> int:
    """Bytes per voxel of an NRRD `type` field (e.g. "short", "unsigned char", "float")."""
    words = nrrd_type.lower().replace("signed ", "").replace("unsigned ", "").split()
    sizes = {"char": 1, "int8": 1, "uint8": 1, "uchar": 1, "short": 2, "int16": 2, "uint16": 2,
             "ushort": 2, "int": 4, "int32": 4, "uint32": 4, "uint": 4, "float": 4, "long": 8,
             "int64": 8, "uint64": 8, "double": 8, "longlong": 8, "ulonglong": 8}
    key = words[-1] if words else ""
    if key not in sizes:
        raise InputError(f"NRRD type '{nrrd_type}' is not supported; supported: {sorted(sizes)}")
    return sizes[key]


def _nrrd_geometry(data: np.ndarray, header: dict) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Move NRRD spatial axes first and build the voxel -> RAS affine from `space directions`."""
    directions = header.get("space directions")
    if directions is None:
        spacings = header.get("spacings", [1.0] * data.ndim)
        spacing = [float(s) if np.isfinite(s) else 1.0 for s in spacings[:3]]
        return data, np.diag(spacing + [1.0]), ("NRRD without space directions: axes taken as RAS",)
    rows = [np.asarray(d, dtype=float) if d is not None else None for d in directions]
    spatial = [i for i, d in enumerate(rows) if d is not None and np.all(np.isfinite(d))]
    other = [i for i in range(data.ndim) if i not in spatial]
    data = np.transpose(data, spatial + other)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([rows[i] for i in spatial], axis=1)
    affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    space = str(header.get("space", "left-posterior-superior")).lower()
    flips = {"left-posterior-superior": [-1, -1, 1], "lps": [-1, -1, 1],
             "left-anterior-superior": [-1, 1, 1], "las": [-1, 1, 1],
             "right-anterior-superior": [1, 1, 1], "ras": [1, 1, 1]}
    if space not in flips:
        raise InputError(f"NRRD space '{space}' is not supported; supported: {sorted(flips)}; "
                         "resample the volume to LPS or RAS")
    affine = np.diag(flips[space] + [1]) @ affine
    return data, affine, ()


# ----------------------------------------------------------------------------------------- DICOM


def _read_dicom_folder(folder: Path, max_frames: int, root: Path | None) -> list[RawVolume]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder} is an empty folder: a DICOM series folder must hold the "
                         "series' .dcm files; point the manifest at the right folder")
    if root is not None:
        outside = [p.name for p in files if not p.resolve().is_relative_to(root.resolve())]
        if outside:
            raise InputError(
                f"{folder}: {len(outside)} file(s) of the series (e.g. {outside[0]}) are links "
                "to files outside the root folder (the manifest's folder, or --root); copy them "
                "into the series folder, or pass --allow-outside-root if you trust them")
    return _read_dicom_files(files, folder, max_frames)


def _dcmread_header(path: Path):
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        raise InputError(f"{path} is not a readable DICOM file ({type(err).__name__}); "
                         "check that it is a complete DICOM image") from err
    modality = str(getattr(ds, "Modality", ""))
    if modality != "MR":
        raise InputError(f"{path}: DICOM Modality must be MR, got {modality or 'none'!r}; "
                         "mri-tune only ingests MR images, remove this file from the manifest")
    for tag in ("Rows", "Columns", "BitsAllocated"):
        if tag not in ds:
            raise InputError(f"{path}: DICOM file has no {tag}, so it holds no image; "
                             "remove it from the manifest")
    sizes = [_numbers(getattr(ds, tag, None) or default, 1, tag, path)[0]
             for tag, default in (("NumberOfFrames", 1), ("Rows", 0), ("Columns", 0),
                                  ("SamplesPerPixel", 1), ("BitsAllocated", 8))]
    frames, rows, columns, samples, bits = (int(v) for v in sizes)
    check_allocation((frames, rows, columns, samples), max(1, bits // 8), path)
    return ds


def _dcm_pixels(path: Path) -> np.ndarray:
    """Pixel data with Rescale Slope/Intercept applied: (frames, rows, cols) float32."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as err:
        raise InputError(f"{path}: the DICOM pixel data cannot be decoded ({type(err).__name__}); "
                         "the file is truncated or uses an unsupported compression") from err
    if pixels.ndim == 2:
        pixels = pixels[None]
    slope = _numbers(getattr(ds, "RescaleSlope", None) or 1.0, 1, "RescaleSlope", path)[0]
    intercept = _numbers(getattr(ds, "RescaleIntercept", None) or 0.0, 1, "RescaleIntercept",
                         path)[0]
    return pixels * slope + intercept


def _numbers(values, n: int, tag: str, path: Path) -> list[float]:
    """A DICOM numeric value (one number or a multi-value) as `n` finite floats."""
    iterable = hasattr(values, "__iter__") and not isinstance(values, (str, bytes))
    items = list(values) if iterable else [values]
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != n or not all(np.isfinite(numbers)):
        shown = str(list(items) if len(items) != 1 else items[0])[:80]
        raise InputError(f"{path}: DICOM {tag} must be {n} finite number(s); got {shown}; the "
                         "header is corrupt: re-export the series or remove it from the manifest")
    return numbers


@dataclass(frozen=True)
class _Slice:
    """Geometry of one DICOM frame: orientation key, position (LPS mm), spacing, order."""

    path: Path
    frame: int
    orientation: tuple[float, ...]
    position: np.ndarray
    pixel_spacing: tuple[float, float]
    thickness: float
    instance: int


def _frame_geometry(ds, path: Path) -> list[_Slice]:
    """Per-frame geometry of a single- or multi-frame DICOM (enhanced functional groups aware);
    InputError when a geometry value is not numeric or cannot make an affine."""
    try:
        return _frame_geometry_unchecked(ds, path)
    except InputError:
        raise
    except (TypeError, ValueError, AttributeError, IndexError) as err:
        # pydicom returns a malformed value (text where a number belongs) as-is; it fails here
        raise InputError(f"{path}: the DICOM geometry cannot be read ({type(err).__name__}); "
                         "orientation, position and spacing must be numbers: re-export the "
                         "series or remove it from the manifest") from err


def _orientation(values, path: Path) -> list[float]:
    """ImageOrientationPatient: two orthogonal unit vectors (row, column cosines)."""
    iop = _numbers(values, 6, "ImageOrientationPatient", path)
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    if (abs(np.linalg.norm(row) - 1) > _COSINE_TOLERANCE
            or abs(np.linalg.norm(col) - 1) > _COSINE_TOLERANCE
            or abs(float(row @ col)) > _COSINE_TOLERANCE):
        raise InputError(f"{path}: DICOM ImageOrientationPatient must hold two orthogonal unit "
                         f"vectors (row and column cosines); got {iop}; the header is corrupt: "
                         "re-export the series or remove it from the manifest")
    return iop


def _pixel_spacing(values, path: Path) -> tuple[float, float]:
    spacing = _numbers(values, 2, "PixelSpacing", path)
    if min(spacing) <= 0:
        raise InputError(f"{path}: DICOM PixelSpacing must be two positive numbers (mm); got "
                         f"{spacing}; the header is corrupt: re-export the series or remove it")
    return spacing[0], spacing[1]


def _frame_geometry_unchecked(ds, path: Path) -> list[_Slice]:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [None] * frames)
    thickness = _numbers(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0,
                         1, "SliceThickness", path)[0]
    thickness = thickness if thickness > 0 else 1.0  # only a single slice's step uses it
    out = []
    for f in range(frames):
        groups = [g for g in (per_frame[f] if f < len(per_frame) else None, shared) if g]
        iop = _first(groups, "PlaneOrientationSequence", "ImageOrientationPatient",
                     ds.get("ImageOrientationPatient"))
        ipp = _first(groups, "PlanePositionSequence", "ImagePositionPatient",
                     ds.get("ImagePositionPatient"))
        spacing = _first(groups, "PixelMeasuresSequence", "PixelSpacing", ds.get("PixelSpacing"))
        iop = [1, 0, 0, 0, 1, 0] if iop is None else _orientation(iop, path)
        # No position: frames are assumed stacked along the normal at `thickness` spacing.
        ipp = (_normal(tuple(iop)) * f * thickness if ipp is None
               else np.asarray(_numbers(ipp, 3, "ImagePositionPatient", path)))
        spacing = (1.0, 1.0) if spacing is None else _pixel_spacing(spacing, path)
        # order key: the file's InstanceNumber, then the frame inside a multi-frame file
        order = int(getattr(ds, "InstanceNumber", 0) or 0) * 10000 + f
        out.append(_Slice(path, f, tuple(np.round(iop, _ORIENTATION_DECIMALS)), ipp, spacing,
                          thickness, order))
    return out


def _first(groups: list, sequence: str, keyword: str, default):
    for g in groups:
        seq = g.get(sequence)
        if seq and keyword in seq[0]:
            return seq[0].get(keyword)
    return default


def _read_dicom_files(files: list[Path], where: Path, max_frames: int) -> list[RawVolume]:
    """DICOM files of one series -> one volume per orientation group (and per repeat)."""
    slices: list[_Slice] = []
    geometry_notes: set[str] = set()
    for path in files:
        ds = _dcmread_header(path)
        if "ImageOrientationPatient" not in ds and "SharedFunctionalGroupsSequence" not in ds:
            geometry_notes.add("no orientation in DICOM header: axial identity assumed")
        slices.extend(_frame_geometry(ds, path))
    groups: dict[tuple, list[_Slice]] = defaultdict(list)
    for s in slices:
        groups[s.orientation].append(s)
    fmt = "DICOM series" if where.is_dir() else "DICOM"
    source_shape = (len(slices), *_first_shape(files[0]))
    check_allocation(source_shape, 4, where)  # the whole series, as float32
    pixel_cache: dict[Path, np.ndarray] = {}
    out = []
    for g, key in enumerate(sorted(groups)):
        prefix = f"orientation {g}" if len(groups) > 1 else ""
        for repeat, stack in enumerate(_stacks(groups[key])):
            if repeat >= max_frames:
                break
            part = " ".join(p for p in (prefix, f"frame {repeat}" if repeat else "") if p)
            image = _stack_to_image(stack, pixel_cache)
            out.append(RawVolume(image, fmt, part, source_shape, 2,
                                 tuple(sorted(geometry_notes))))
    if len(groups) > 1:
        logger.info("%s: %d orientation groups read as separate volumes", where.name, len(groups))
    return out


def _first_shape(path: Path) -> tuple[int, int]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


def _stacks(group: list[_Slice]) -> list[list[_Slice]]:
    """Sort one orientation group along its normal; repeated positions (diffusion b-values,
    echoes) become successive stacks, the k-th occurrence of each position in stack k."""
    normal = _normal(group[0].orientation)
    by_position: dict[float, list[_Slice]] = defaultdict(list)
    for s in sorted(group, key=lambda s: s.instance):
        by_position[round(float(s.position @ normal), 2)].append(s)
    positions = sorted(by_position)
    n_stacks = min(len(v) for v in by_position.values())
    return [[by_position[p][k] for p in positions] for k in range(n_stacks)]


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    return np.cross(row, col)


def _stack_to_image(stack: list[_Slice], cache: dict[Path, np.ndarray]) -> nib.Nifti1Image:
    """Slices sorted along the normal -> Nifti1Image (cols, rows, slices) with an RAS affine."""
    planes = []
    for s in stack:
        if s.path not in cache:
            cache[s.path] = _dcm_pixels(s.path)
        planes.append(cache[s.path][s.frame])
    if len({p.shape for p in planes}) > 1:
        raise InputError(f"{stack[0].path.parent}: slices of one orientation differ in size; "
                         "a series folder must hold one series, split it into one folder each")
    data = np.stack(planes, axis=-1).transpose(1, 0, 2)  # (cols, rows, slices)
    first = stack[0]
    row_cos, col_cos = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row_cos, col_cos)
    if len(stack) > 1:
        steps = np.diff([float(s.position @ normal) for s in stack])
        slice_step = float(np.median(steps))
    else:
        slice_step = first.thickness
    affine = np.eye(4)
    affine[:3, 0] = row_cos * first.pixel_spacing[1]  # along a row: column spacing
    affine[:3, 1] = col_cos * first.pixel_spacing[0]  # down a column: row spacing
    affine[:3, 2] = normal * slice_step
    affine[:3, 3] = first.position
    return nib.Nifti1Image(data.astype(np.float32), _LPS_TO_RAS @ affine)
