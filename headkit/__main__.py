"""``python -m headkit``: the command line, also as ``torchrun --nproc_per_node N -m headkit ...``."""

import sys

from headkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
