"""`python -m napari_bioflow.cli ...` (torchrun runs it so)."""

import sys

from .main import main

sys.exit(main())
