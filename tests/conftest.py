"""Shared fixtures: the real sample data and one store ingested from it per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real sample MR volumes, found as the demo finds them (`mri_tune.samples`:
    $MRI_TUNE_SAMPLES, else ../shared/data/mri); fails if absent."""
    from mri_tune.data.samples import DEFAULT_SAMPLES, find_samples

    folder = find_samples()
    if folder is None:
        pytest.fail(f"sample MRI data not found: {DEFAULT_SAMPLES}/manifest.csv does not exist; "
                    "set MRI_TUNE_SAMPLES to the folder of the sample volumes (with manifest.csv) "
                    "or place it at ../shared/data/mri beside the repository")
    return folder


@pytest.fixture(scope="session")
def sample_store(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of all sample volumes, --planes all at 128x128, seed 0; ingested once."""
    from mri_tune_datasets.ingest import IngestSettings, ingest

    out = tmp_path_factory.mktemp("sample_store") / "samples.h5"
    ingest(IngestSettings(manifest=samples_dir / "manifest.csv", out=out, size=128,
                          planes="all", seed=0))
    return out


class TinyFiles:
    """Builders of tiny MR files (NIfTI, DICOM, NRRD) and manifests for unit tests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def phantom(shape: tuple[int, ...] = (24, 20, 12), seed: int = 0):
        """A smooth blob with noise: (X, Y, Z) float32, never constant slice-wise."""
        import numpy as np

        rng = np.random.default_rng(seed)
        grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:3]], indexing="ij")
        blob = np.exp(-sum(g**2 for g in grids) * 2.0) * 1000.0
        data = blob + rng.normal(0, 20, shape[:3])
        if len(shape) > 3:
            data = np.stack([data * (1 + 0.1 * t) for t in range(shape[3])], axis=-1)
        return data.astype(np.float32)

    def nifti(self, name: str, data=None, affine=None) -> Path:
        import nibabel as nib
        import numpy as np

        data = self.phantom() if data is None else data
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
        return path

    def dicom(self, path: Path, pixels, position=(0.0, 0.0, 0.0),
              orientation=(1, 0, 0, 0, 1, 0), spacing=(1.0, 1.0), modality: str = "MR",
              instance: int = 1, thickness: float = 1.0) -> Path:
        """One single-frame 16-bit DICOM image; `pixels` is (rows, cols)."""
        import numpy as np
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientName, ds.PatientID = "Secret^Patient", "SECRET-ID-42"
        ds.InstitutionName, ds.StudyDate = "Secret Hospital", "19990101"
        ds.InstanceNumber = instance
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.PixelSpacing = [float(v) for v in spacing]
        ds.SliceThickness = thickness
        pixels = np.asarray(pixels, dtype=np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return path

    def dicom_series(self, name: str, n: int = 8, modality: str = "MR",
                     orientation=(1, 0, 0, 0, 1, 0), spacing: float = 2.0) -> Path:
        import numpy as np

        folder = self.folder / name
        data = self.phantom((20, 16, n))
        row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
        normal = np.cross(row, col)
        for k in range(n):
            self.dicom(folder / f"im{k:03d}.dcm", data[:, :, k], tuple(normal * k * spacing),
                       orientation, modality=modality, instance=k + 1, thickness=spacing)
        return folder

    def manifest(self, rows: list[tuple[str, str, str]], name: str = "manifest.csv",
                 header: str = "path,region,subject") -> Path:
        path = self.folder / name
        path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
        return path

    def good_rows(self, region: str = "head", n: int = 3) -> list[tuple[str, str, str]]:
        """n valid NIfTI volumes of n subjects of `region`."""
        rows = []
        for i in range(n):
            self.nifti(f"{region}{i}.nii.gz", self.phantom(seed=i))
            rows.append((f"{region}{i}.nii.gz", region, f"{region}-s{i}"))
        return rows


@pytest.fixture
def tiny(tmp_path: Path) -> TinyFiles:
    return TinyFiles(tmp_path)
