"""``python -m ivy``: the same command line as ``ivy``."""

import sys

from ivy.cli import main

sys.exit(main())
