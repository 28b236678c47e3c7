"""Train Efficient-VDVAE with PyTorch.

    python train.py [--config FILE] [--set section.key=value ...]   # one process
    sh train.sh     [--config FILE] [--set section.key=value ...]   # one process per GPU (torchrun)

Run from the folder where logs-<name>/ and checkpoints-<name> should live;
--config defaults to ./hparams.cfg. Re-running a name resumes it; reset.sh
<name> deletes it. SIGTERM or Ctrl-C: the current step finishes, a checkpoint
is written, and the process exits 0 (Ctrl-C twice aborts at once).
"""
from __future__ import annotations

import os
import sys

from efficient_vdvae_common.data import DataError
from efficient_vdvae_common.disk_errors import DiskWriteError
from efficient_vdvae_common.lost_process import EXIT_LOST_PROCESS, lost_process_message
from efficient_vdvae_common.training_log import EXIT_DIVERGED, TrainingDiverged
from efficient_vdvae_common.training_progress import CheckpointError
from efficient_vdvae_torch.checkpoints import checkpoint_path
from efficient_vdvae_torch.distributed import (init_distributed, is_lost_process_error,
                                               shutdown_distributed)
from efficient_vdvae_torch.trainer import Trainer
from hparams import ConfigError
from hparams.cli import load_config_or_exit, parse_args
from hparams.saved_run import saved_config_path

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Train Efficient-VDVAE (PyTorch).", argv)
    # Before the process group exists, torchrun's RANK says who is rank 0: the only one to print
    # the "saved configuration is used" note.
    hp = load_config_or_exit(args, save=False, is_writer=os.environ.get("RANK", "0") == "0")
    ctx = init_distributed(hp.run.distributed_timeout_seconds)
    trainer, lost_process = None, False
    try:
        if ctx.is_main and hp.run.num_gpus != ctx.world_size:
            print(f"note: run.num_gpus = {hp.run.num_gpus} but {ctx.world_size} process(es) run; the global "
                  f"batch train.batch_size = {hp.train.batch_size} is split over {ctx.world_size}.", flush=True)
        trainer = Trainer(hp, ctx)
        # Save the run's config only once data and checkpoint are known to be usable, so that a
        # typo does not leave a saved run behind; rank 0 writes it, the others have the same values.
        if not saved_config_path(hp.run.name).is_file():  # a saved run: read above, its note printed once
            load_config_or_exit(args, save=True, is_writer=ctx.is_main)
        trainer.run()
    except (CheckpointError, ConfigError, DataError, DiskWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as error:
        if ctx.is_main:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except RuntimeError as error:
        if not is_lost_process_error(error):
            raise
        lost_process = True
        saved = trainer.saved_progress if trainer is not None else None
        print("error: " + lost_process_message(ctx.rank, ctx.world_size, hp.run.distributed_timeout_seconds, error,
                                               checkpoint_path(hp.run.name), saved.global_step if saved else None),
              file=sys.stderr, flush=True)
        return EXIT_LOST_PROCESS
    finally:
        if not lost_process:  # tearing down a group with a dead member can block
            shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
