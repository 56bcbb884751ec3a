"""``python -m sing_audit`` (and ``torchrun -m sing_audit run audit.yaml``)."""

import sys

from .cli import main

sys.exit(main())
