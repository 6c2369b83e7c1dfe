"""mri-tune: the anatomical region of MRI slices and volumes, with CNNs chosen by a GP search.

Implements and extends Bertrand, Perrot, Ardon, Bloch, "Classification of MRI data using Deep
Learning and Gaussian Process-based Model Selection" (ISBI 2017, arXiv 1701.04355).

Importing the package is cheap: torch, ray and h5py load only in the modules that use them.
"""

__version__ = "0.1.0"
