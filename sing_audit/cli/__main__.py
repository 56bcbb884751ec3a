"""``python -m sing_audit.cli`` (the same as ``sing-audit``)."""

import sys

from . import main

sys.exit(main())
