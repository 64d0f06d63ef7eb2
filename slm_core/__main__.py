"""`python -m slm_core ...` is the `slm` command (the Studio's worker uses this form)."""

import sys

from slm_core.cli import main

sys.exit(main())
