"""`python -m mri_tune` is the `mri-tune` command."""

import sys

from mri_tune.cli import main

sys.exit(main())
