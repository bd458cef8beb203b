"""Helper for test_kill_resume: `lcirc train ...` that kill -9s itself at a point of checkpoint writing.

usage: python kill_driver.py WHEN FUNCTION N <lcirc train arguments>
WHEN is before/after, FUNCTION a name in lcirc_fast.training.checkpoint (save_state, write_manifest),
N which call of it; WHEN=never runs without a kill.
"""
import os
import signal
import sys

from lcirc_fast.cli import main
from lcirc_fast.training import checkpoint


def arm(when: str, name: str, n: int) -> None:
    """Replace checkpoint.<name> by a wrapper that SIGKILLs the process around its n-th call."""
    orig, calls = getattr(checkpoint, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = orig(*args, **kwargs)
        if calls[0] == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(checkpoint, name, wrapped)


if __name__ == "__main__":
    when, name, n = sys.argv[1:4]
    if when != "never":
        arm(when, name, int(n))
    sys.exit(main(["train", *sys.argv[4:]]))
