"""Non-finite gradients on chosen optimizer steps, for the NaN/inf tests.

`install(steps)` makes TrainingRun.backward multiply the loss by NaN while the optimizer step being
built is one of `steps` (1-based), so every gradient of that step is NaN while the logged loss stays
finite: the step must be caught by its gradient norm. Run as a script (under torchrun), it installs
the steps named in POISON_STEPS and then runs `alignlab <argv>`.
"""

from __future__ import annotations

import os
import sys


def install(steps) -> None:
    from alignlab.engine.loop import TrainingRun

    steps = {int(s) for s in steps}
    backward = TrainingRun.backward

    def poisoned(self, loss):
        attempt = self.step + self.skipped_steps + 1  # counts skipped attempts too
        backward(self, loss * float("nan") if attempt in steps else loss)

    TrainingRun.backward = poisoned


if __name__ == "__main__":
    install(s for s in os.environ.get("POISON_STEPS", "").split(",") if s)
    from alignlab.cli import main

    sys.exit(main(sys.argv[1:]))
