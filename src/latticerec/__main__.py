"""``python -m latticerec`` (and ``torchrun -m latticerec``): the ``latticerec`` command."""

import sys

from latticerec.cli import main

if __name__ == "__main__":
    sys.exit(main())
