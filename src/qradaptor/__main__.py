"""``python -m qradaptor`` is ``qra``."""

import sys

from qradaptor.cli import main

sys.exit(main())
