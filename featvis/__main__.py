"""`python -m featvis ...` runs the command line, like the `featvis` console script."""

import sys

from .cli import main

sys.exit(main())
