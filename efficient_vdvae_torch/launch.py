"""torchrun (torch.distributed.run) with stop signals left to the training ranks; used by train.sh.

    python launch.py [torchrun options] train.py [train.py arguments]

Plain torchrun answers SIGTERM/SIGINT by killing its ranks (after 30 s) and
exiting 1 with a traceback, even when the ranks stop cleanly. Here the
launcher does not act on them: it forwards one SIGTERM to each rank (so a
signal sent to the launcher alone stops the run too; a signal to the whole
process group reaches the ranks directly, and a repeated SIGTERM is harmless)
and waits. The ranks finish their step, rank 0 checkpoints, they exit 0, and
so does the launcher. A second Ctrl-C aborts the launcher at once.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# torchrun installs its killing handler only for the signals of this option; keep the other two.
TORCHRUN_SIGNALS = "--signals-to-handle=SIGHUP,SIGQUIT"


def child_pids() -> list[int]:
    """This process's children (Linux /proc; empty elsewhere)."""
    pids = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


class ForwardStop:
    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = True
        print(f"launcher: {signal.Signals(signum).name} received; asking the ranks to checkpoint and stop",
              file=sys.stderr, flush=True)
        for pid in child_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def main(argv: list[str]) -> int:
    forward = ForwardStop()
    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    from torch.distributed.run import main as torchrun

    torchrun([TORCHRUN_SIGNALS, *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
