"""Ingest of MR volumes into the HDF5 slice store (the only code that writes a store).

Modules: `manifest` (the CSV), `readers` (NIfTI, DICOM, NRRD -> RAS-affine volumes),
`preprocess` (canonical orientation, slicing, resize, normalisation; `volume_file_to_slices`
for predict), `split` (subject-level stratified split), `writer` (atomic store writer),
`ingest` (`IngestSettings`, `ingest`), `fallback` (demo set from packaged MR files).
Choices are explained in docs/INGEST.md.
"""
