"""Train Efficient-VDVAE with JAX, data parallel over all local devices, or over several hosts.

    python train.py [--config FILE] [--set section.key=value ...]

Run from the folder where logs-<name>/ and checkpoints-<name>/ should live;
--config defaults to ./hparams.cfg. Re-running a name resumes it; reset.sh
<name> deletes it. SIGTERM or Ctrl-C: the current step finishes, a checkpoint
is written, and the process exits 0 (Ctrl-C twice aborts at once).

Several hosts: start this same command once per host with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set, or under `srun`/`mpirun`
(efficient_vdvae_jax/distributed.py; README "Several machines").
"""
from __future__ import annotations

import os
import sys

import jax

from efficient_vdvae_common.data import DataError
from efficient_vdvae_common.disk_errors import DiskWriteError
from efficient_vdvae_common.lost_process import EXIT_LOST_PROCESS, lost_process_message
from efficient_vdvae_common.training_log import EXIT_DIVERGED, TrainingDiverged
from efficient_vdvae_common.training_progress import CheckpointError
from efficient_vdvae_jax.distributed import (init_distributed, is_lost_process_error,
                                             shutdown_distributed)
from efficient_vdvae_jax.trainer import Trainer
from hparams import ConfigError, checkpoints_path
from hparams.cli import load_config_or_exit, parse_args
from hparams.saved_run import saved_config_path

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Train Efficient-VDVAE (JAX).", argv)
    hp = load_config_or_exit(args, save=False)
    try:
        context = init_distributed(hp.run.distributed_timeout_seconds)  # before anything touches a device
    except (ValueError, RuntimeError) as error:
        print(f"error: cannot join the multi-process run (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
              f"JAX_PROCESS_ID): {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _train(args, hp, context.is_main)
    finally:
        shutdown_distributed()


def _exit_lost_process(hp, trainer: Trainer | None, error: BaseException) -> None:
    """The message, then exit at once: an orderly exit would wait at jax's shutdown barrier for the lost
    process until the heartbeat timeout, and then be aborted by jax."""
    saved = trainer.saved_progress if trainer is not None else None
    print("error: " + lost_process_message(jax.process_index(), jax.process_count(),
                                           hp.run.distributed_timeout_seconds, error,
                                           checkpoints_path(hp.run.name),
                                           saved.global_step if saved else None),
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_LOST_PROCESS)


def _train(args, hp, is_main: bool) -> int:
    num_devices = jax.local_device_count()
    if hp.run.num_gpus != num_devices and is_main:
        where = f" per process, {jax.device_count()} in all" if jax.process_count() > 1 else ""
        print(f"note: run.num_gpus = {hp.run.num_gpus} but {num_devices} {jax.default_backend()} device(s){where} "
              f"are used; the global batch train.batch_size = {hp.train.batch_size} is split over them.",
              flush=True)
    trainer = None
    try:
        trainer = Trainer(hp)
        # Save the run's config only once data and checkpoint are known to be usable, so that a
        # typo does not leave a saved run behind.
        if not saved_config_path(hp.run.name).is_file():  # a saved run: read above, its note printed once
            load_config_or_exit(args, save=True, is_writer=is_main)
        trainer.run()
    except (CheckpointError, ConfigError, DataError, DiskWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except (RuntimeError, ValueError) as error:
        if not is_lost_process_error(error):
            raise
        _exit_lost_process(hp, trainer, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
