"""mri-tune: the anatomical region of MRI slices and volumes, with CNNs chosen by a GP search.

Implements and extends Bertrand, Perrot, Ardon, Bloch, "Classification of MRI data using Deep
Learning and Gaussian Process-based Model Selection" (ISBI 2017, arXiv 1701.04355).

The application, in layers that import only downward (docs/ARCHITECTURE.md):
    cli         the `mri-tune` command line
    results     ranked trials, the top-k ensemble, evaluation, report, predictions
    experiment  the search on Ray Tune: space, resources, trainable, console, tuner
    training    the CNN and its one training loop
    data        the slice store reader and the sample data
    errors      the application's error types
Below it: `mri_tune_datasets` (ingest) and `searchers` (the GP searcher), and under both the
ground layer `mri_tune_core` (errors, store format, the paper's numbers).

Importing the package is cheap: torch, ray and h5py load only in the modules that use them.
"""

__version__ = "0.1.0"
