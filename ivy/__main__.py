"""``python -m ivy``: the same command line as ``ivy``."""

import sys

from ivy.cli import main

if __name__ == "__main__":
    sys.exit(main())
