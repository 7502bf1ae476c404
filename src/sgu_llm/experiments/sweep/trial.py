"""`python -m sgu_llm.experiments.sweep.trial SPEC RESULT`: one sweep trial inside an `accelerate launch` job.

`SPEC` is a pickle of (sweep class, sweep config, trial), written by `backends.launch_trial`; every process of
the job runs the trial (the unlearning is data-parallel), and the main process pickles its result to `RESULT`.
"""

from __future__ import annotations

import os
import pickle
import sys


def main(argv: list[str]) -> int:
    spec, result = argv
    with open(spec, "rb") as fh:
        sweep_class, cfg, trial = pickle.load(fh)
    out = sweep_class(cfg, log=lambda message: None).execute(trial)
    if int(os.environ.get("RANK", "0")) == 0:
        tmp = result + ".tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(out, fh)
        os.replace(tmp, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
