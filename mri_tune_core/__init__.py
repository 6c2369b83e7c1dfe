"""The ground layer: what both ingest (`mri_tune_datasets`), the searcher (`searchers`) and the
application (`mri_tune`) need, and nothing else.

    errors.py        the base error types every layer derives its own from
    store_format.py  the HDF5 slice store's names and version (ingest writes it, mri_tune reads it)
    paper.py         every number and symbol of Bertrand et al. (ISBI 2017)
    files.py         writing a file by a rename, so a crash never leaves half of it

It imports nothing of the project (checked by import-linter, `make lint`).
"""
