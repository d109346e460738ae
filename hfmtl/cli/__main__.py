"""``python -m hfmtl.cli``: the `hfmtl` command (``accelerate launch -m hfmtl.cli train CONFIG`` too)."""

import sys

from .main import main

sys.exit(main())
