"""``python -m lutc``: the ``lutc`` command (see :mod:`lutc.cli`)."""
import sys

from .cli import main

sys.exit(main())
