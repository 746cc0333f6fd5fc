"""`python -m alignlab ...` (also what `torchrun -m alignlab` and `accelerate launch -m alignlab` run)."""

import sys

from alignlab.cli import main

sys.exit(main())
