"""What a training process says when another process of its run (another GPU, another node) is gone.

Framework-free: each framework recognises its own communication errors and
calls `lost_process_message`; both exit with `EXIT_LOST_PROCESS`.
"""
from __future__ import annotations

from pathlib import Path

# 2: bad input (config, data, checkpoint); 3: training diverged; 4: the run lost one of its processes.
EXIT_LOST_PROCESS = 4


def lost_process_message(rank: int, world_size: int, timeout_seconds: float, error: BaseException,
                         checkpoint_file: Path, checkpoint_step: int | None) -> str:
    """One paragraph: what happened, what was kept, how to resume."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if checkpoint_step is not None:
        what_next = (f"The last checkpoint {checkpoint_file} (step {checkpoint_step}) is kept; start the same "
                     "command again on every node to resume from it.")
    else:
        what_next = (f"No checkpoint was written yet ({checkpoint_file}); start the same command again on every "
                     "node to start over.")
    return (f"rank {rank} of {world_size} lost contact with another training process: a rank or a whole node "
            f"crashed, was killed or became unreachable (a peer that does not answer is given up on after "
            f"run.distributed_timeout_seconds = {timeout_seconds:g} s). {what_next} Cause: {detail}")
