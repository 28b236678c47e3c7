"""Convert training checkpoints between the PyTorch and JAX implementations (SPEC.md section 10).

    python efficient_vdvae_jax/convert_checkpoint.py to-jax checkpoints-NAME jax/checkpoints-NAME --config CFG
    python efficient_vdvae_jax/convert_checkpoint.py to-torch jax/checkpoints-NAME checkpoints-NAME --config CFG
    python efficient_vdvae_jax/convert_checkpoint.py from-original-jax SRC DST --config CFG --framework torch|jax

`to-jax` reads a PyTorch checkpoint file (ours or the original code's) and
writes a JAX run's checkpoint folder with efficient_vdvae_jax/checkpoints.py,
so that efficient_vdvae_jax/train.py resumes from it; `to-torch` reads the
latest (or `--step N`) checkpoint of such a folder and writes the single file
that efficient_vdvae_torch/train.py resumes from and synthesize.py loads.
Both ways carry the weights, the EMA weights, the optimiser moments (Adamax
m, u; Adam/RAdam m, v: same definitions in torch and optax, so they convert
exactly like the weights), the update and skip counters and the data
position; the learning-rate schedule is set at the step. A bad source,
destination or model config exits 2 with one line naming it.

`from-original-jax` reads a checkpoint of the original JAX code (see
efficient_vdvae_jax/original_checkpoint.py) and writes either of ours; it
carries the weights, EMA weights, the Adam-family moments and counts and the
step, and says which settings start at their defaults. `--force` replaces an
existing checkpoint (never anything else): the new one is written beside it
and swapped in when complete, so a kill at any moment leaves one of them.

Our flax tree mirrors the PyTorch keys: a key's numeric parts are glued to the
name before them (`levels_down.2.0` <-> `levels_down_2_0`, `convs.1` <->
`convs_1`) and `weight` is called `kernel`. The values change layout:
conv kernels (out, in, kh, kw) <-> (kh, kw, in, out); `trainable_h` and
`scale_bias` NCHW <-> NHWC; the output conv's MoL channels (C, 3M) <-> (3M, C)
(SPEC.md section 5).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from efficient_vdvae_common.disk_errors import DiskWriteError  # noqa: E402
from efficient_vdvae_common.parameter_layouts import (  # noqa: E402,F401  (re-exported)
    first_shape_mismatch, flax_params_to_torch_state_dict, flax_path_to_torch_key, mol_channel_permutation,
    torch_key_to_flax_path, torch_state_dict_to_flax_params)

EXIT_CONVERSION_ERROR = 2


class ConversionError(ValueError):
    """A source, destination or config that cannot be converted, named in the message."""


@dataclasses.dataclass(frozen=True)
class Converted:
    """What a conversion wrote: the checkpoint, its counters and data position, the optimiser's update count."""
    path: Path
    global_step: int
    gradient_skip_count: int
    data_epoch: int
    data_batch: int
    optimizer_count: int  # 0: fresh optimiser moments
    notes: str = ""  # what the source lacked

    def summary(self) -> str:
        moments = (f"optimizer moments at update {self.optimizer_count}" if self.optimizer_count
                   else "fresh optimizer moments (none in the source)")
        return (f"wrote {self.path}: step {self.global_step}, {self.gradient_skip_count} skipped updates, "
                f"data epoch {self.data_epoch} batch {self.data_batch}, {moments}{self.notes}")


def _shape_mismatch(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """'parameter K is S there and W in the model config' for the first differing entry, else None."""
    mismatch = first_shape_mismatch(saved, wanted)
    return None if mismatch is None else "parameter {} is {} there and {} in the model config".format(*mismatch)


# ---- Optimiser moments: one torch state per parameter <-> one optax ScaleByAdamState for the tree.

def _second_moment_key(optimizer: Any) -> str:
    from efficient_vdvae_torch.checkpoints import second_moment_key

    return second_moment_key(optimizer)


def torch_optimizer_moments(hp: Any, model: Any, optimizer: Any) -> tuple[int, dict, dict]:
    """(update count, first moments, second moments) of a torch Adam-family optimiser as flax trees.

    A fresh optimiser (no state yet) gives count 0 and zero moments, like optax's init.
    """
    second_key = _second_moment_key(optimizer)
    first, second, counts = {}, {}, set()
    for name, parameter in model.named_parameters():
        state = optimizer.state.get(parameter)
        if not state:
            zeros = np.zeros(tuple(parameter.shape), np.float32)
            first[name], second[name] = zeros, zeros
            continue
        if "exp_avg" not in state or second_key not in state:
            raise ConversionError(f"the optimizer state of {name} holds {sorted(state)}; optimizer.type = "
                                  f"{hp.optimizer.type!r} keeps 'exp_avg' and {second_key!r}")
        first[name], second[name] = state["exp_avg"], state[second_key]
        counts.add(int(state["step"]))
    if len(counts) > 1:
        raise ConversionError(f"the optimizer's parameters have different step counts {sorted(counts)}; "
                              "optax keeps one count for all")
    count = counts.pop() if counts else 0
    return count, torch_state_dict_to_flax_params(hp, first), torch_state_dict_to_flax_params(hp, second)


def _adam_state(opt_state: tuple) -> Any:
    import optax

    for state in opt_state:
        if isinstance(state, optax.ScaleByAdamState):
            return state
    raise ConversionError(f"no Adam-family state in the optax state {[type(s).__name__ for s in opt_state]}")


def _as_jax_tree(tree: Any) -> Any:
    import jax
    import jax.numpy as jnp

    return jax.tree.map(jnp.asarray, tree)


# ---- Files.

_CONVERTING_MARKER = ".converting-"
# What a JAX checkpoint folder holds: steps, orbax's temporary steps, steps the trainer moved aside.
_JAX_CHECKPOINT_ENTRY = re.compile(r"^\d+(\.orbax-checkpoint-tmp.*|\.unreadable)?$")


def _check_destination(source: Path, destination: Path, force: bool, is_folder: bool) -> None:
    """Refuse to overwrite without --force, to overwrite the source, or to replace anything but a checkpoint."""
    if source.resolve() == destination.resolve() or destination.resolve() in source.resolve().parents:
        raise ConversionError(f"destination {destination} is (or holds) the source")
    if not destination.exists():
        return
    if not force:
        raise ConversionError(f"destination {destination} exists (--force replaces it)")
    if destination.is_dir() != is_folder:
        wanted = "a JAX checkpoint folder" if is_folder else "a PyTorch checkpoint file"
        raise ConversionError(f"destination {destination} is a {'folder' if destination.is_dir() else 'file'}; "
                              f"this direction writes {wanted}: not replacing it even with --force")
    if destination.is_dir():
        foreign = [p.name for p in destination.iterdir() if not _JAX_CHECKPOINT_ENTRY.match(p.name)]
        if foreign:
            raise ConversionError(f"destination {destination} holds {foreign[0]!r}, which is not a JAX checkpoint: "
                                  "not replacing it even with --force")
        return
    from efficient_vdvae_common.training_progress import CheckpointError
    from efficient_vdvae_torch.checkpoints import load_checkpoint

    try:
        load_checkpoint(destination)
    except CheckpointError as error:
        raise ConversionError(f"destination {destination} is not a PyTorch checkpoint, not replacing it even "
                              f"with --force ({error})") from None


def _temporary_destination(destination: Path) -> Path:
    """A fresh path beside `destination` (same file system, so the final rename is atomic)."""
    remove_stale_conversions(destination)
    return destination.with_name(f"{destination.name}{_CONVERTING_MARKER}{os.getpid()}")


def remove_stale_conversions(destination: Path) -> None:
    """Delete what a conversion killed before its swap left beside `destination`."""
    for stale in destination.parent.glob(f"{destination.name}{_CONVERTING_MARKER}*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = libc.renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    return result == 0


def _move_into_place(temporary: Path, destination: Path) -> None:
    """Put the finished `temporary` at `destination`; at every moment one complete checkpoint is there.

    A file is renamed over the old one (atomic). A folder is swapped with the old one in one
    step where the system can (Linux); otherwise the old one is renamed aside first, so a kill
    between the two renames leaves both, complete, beside each other.
    """
    if not destination.exists() or temporary.is_file():
        os.replace(temporary, destination)
    elif _exchange(temporary, destination):
        shutil.rmtree(temporary)  # now the old checkpoint
    else:
        old = destination.with_name(f"{destination.name}.replaced-{os.getpid()}")
        os.rename(destination, old)
        os.rename(temporary, destination)
        shutil.rmtree(old)
    directory = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_jax_checkpoint(hp: Any, train_state: Any, progress: Any, destination: Path) -> Path:
    """Write (TrainState, progress) as a JAX run folder at `destination` via a temporary folder."""
    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints

    temporary = _temporary_destination(destination)
    checkpoints = TrainingCheckpoints(temporary, hp.run.max_allowed_checkpoints, optimizer_type=hp.optimizer.type)
    try:
        checkpoints.save(train_state, progress)
    finally:
        checkpoints.close()
    _move_into_place(temporary, destination)
    return destination.resolve() / str(progress.consumed_batches)


def _torch_training_objects(hp: Any) -> tuple[Any, Any, Any, Any]:
    """(model, ema_model, optimizer, lr_schedule) as efficient_vdvae_torch/train.py builds them."""
    from efficient_vdvae_torch.model import UniversalAutoEncoder as TorchAutoEncoder
    from efficient_vdvae_torch.model.optimizers import build_optimizer as build_torch_optimizer
    from efficient_vdvae_torch.model.schedules import learning_rate_schedule as build_torch_lr_schedule

    model, ema_model = TorchAutoEncoder(hp), TorchAutoEncoder(hp)
    optimizer = build_torch_optimizer(hp, model)
    return model, ema_model, optimizer, build_torch_lr_schedule(hp, optimizer)


def torch_checkpoint_to_jax(hp: Any, source: str | Path, destination: str | Path, force: bool = False
                            ) -> Converted:
    """A PyTorch checkpoint file (ours or the original's) -> a new JAX checkpoint folder; returns the checkpoint."""
    import jax.numpy as jnp

    from efficient_vdvae_jax.checkpoints import with_moments
    from efficient_vdvae_jax.model.optimizers import build_optimizer as build_jax_optimizer
    from efficient_vdvae_jax.train_step import TrainState
    from efficient_vdvae_torch.checkpoints import load_checkpoint, restore_training_state

    source, destination = Path(source), Path(destination)
    if _is_original_jax(source):
        return original_jax_checkpoint_to(hp, source, destination, "jax", force)
    state = load_checkpoint(source)
    if state is None:
        raise ConversionError(f"no PyTorch checkpoint at {source}")
    _check_destination(source, destination, force, is_folder=True)
    model, ema_model, optimizer, lr_schedule = _torch_training_objects(hp)
    for key in ("model_state_dict", "ema_model_state_dict"):
        mismatch = _shape_mismatch(state[key], model.state_dict())
        if mismatch:
            raise ConversionError(f"checkpoint {source} ({key}) does not fit the config: {mismatch}")
    progress = restore_training_state(state, model, ema_model, optimizer, lr_schedule)

    params = _as_jax_tree(torch_state_dict_to_flax_params(hp, model.state_dict()))
    count, mu, nu = torch_optimizer_moments(hp, model, optimizer)
    opt_state = with_moments(build_jax_optimizer(hp).init(params), count, mu, nu, progress.global_step)
    train_state = TrainState(step=jnp.asarray(progress.global_step, jnp.int32), params=params,
                             ema_params=_as_jax_tree(torch_state_dict_to_flax_params(hp, ema_model.state_dict())),
                             opt_state=opt_state,
                             skipped_updates=jnp.asarray(progress.gradient_skip_count, jnp.int32))
    written = _write_jax_checkpoint(hp, train_state, progress, destination)
    return Converted(written, optimizer_count=count, **dataclasses.asdict(progress))


def jax_checkpoint_to_torch(hp: Any, source: str | Path, destination: str | Path, step: int | None = None,
                            force: bool = False) -> Converted:
    """A JAX checkpoint folder's latest (or `step`) checkpoint -> a PyTorch checkpoint file."""
    import jax
    import torch

    from efficient_vdvae_common.training_progress import TrainingProgress
    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints, abstract_train_state
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_torch.checkpoints import save_checkpoint, set_adam_moments, training_state

    source, destination = Path(source), Path(destination)
    if _is_original_jax(source):
        return original_jax_checkpoint_to(hp, source, destination, "torch", force)
    if not source.is_dir():
        raise ConversionError(f"{source} is not a JAX checkpoint folder"
                              + (" (a PyTorch checkpoint file? use to-jax)" if source.is_file() else ""))
    _check_destination(source, destination, force, is_folder=False)
    checkpoints = TrainingCheckpoints(source, hp.run.max_allowed_checkpoints, optimizer_type=hp.optimizer.type)
    try:
        available = checkpoints.manager.all_steps() if checkpoints.latest() is not None else []
        if not available:
            raise ConversionError(f"no checkpoint in {source}")
        if step is not None and step not in available:
            raise ConversionError(f"no checkpoint {source / str(step)}; there are {sorted(available)}")
        abstract = abstract_train_state(hp, UniversalAutoEncoder(hp),
                                        jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
        train_state, progress = checkpoints.restore(abstract, step)
    finally:
        checkpoints.close()
    train_state = jax.device_get(train_state)

    model, ema_model, optimizer, lr_schedule = _torch_training_objects(hp)
    for target, params in ((model, train_state.params), (ema_model, train_state.ema_params)):
        target.load_state_dict({k: torch.tensor(v) for k, v in flax_params_to_torch_state_dict(hp, params).items()})
    adam = _adam_state(train_state.opt_state)
    set_adam_moments(optimizer, model, int(adam.count), flax_params_to_torch_state_dict(hp, adam.mu),
                     flax_params_to_torch_state_dict(hp, adam.nu))
    # The torch schedule steps once per applied update: put it (and the groups' lr) at the restored step.
    lr_schedule.last_epoch = progress.global_step - 1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step", category=UserWarning)
        lr_schedule.step()
    counters = dataclasses.asdict(progress)
    temporary = _temporary_destination(destination)
    save_checkpoint(training_state(TrainingProgress(**counters), model, ema_model, optimizer, lr_schedule), temporary)
    _move_into_place(temporary, destination)
    return Converted(destination, optimizer_count=int(adam.count), **counters)


def _is_original_jax(source: Path) -> bool:
    from efficient_vdvae_jax.original_checkpoint import is_original_checkpoint

    return is_original_checkpoint(source)


def original_jax_checkpoint_to(hp: Any, source: str | Path, destination: str | Path, framework: str,
                               force: bool = False) -> Converted:
    """A checkpoint of the original JAX code (msgpack file, orbax folder, or `checkpoints-<name>/` holding
    `checkpoint_<step>`) -> our PyTorch checkpoint file (`framework='torch'`) or JAX checkpoint folder.

    Carries the weights, EMA weights, Adam-family moments and counts, and the step; the skip counter
    and data position (which the original did not save) start at 0.
    """
    import jax

    from efficient_vdvae_common.training_progress import CheckpointError
    from efficient_vdvae_jax.checkpoints import abstract_train_state, restore_original
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_torch.checkpoints import (ORIGINAL_JAX_KEY, load_checkpoint, restore_training_state,
                                                   save_checkpoint, training_state)

    source, destination = Path(source), Path(destination)
    if framework not in ("torch", "jax"):
        raise ConversionError(f"--framework must be 'torch' or 'jax', got {framework!r}")
    if not source.exists():
        raise ConversionError(f"no checkpoint at {source}")
    if not _is_original_jax(source) and not (source.is_file() and source.stat().st_size == 0):
        # (an empty file is left to the reader, which says why it is empty)
        raise ConversionError(f"{source} is not a checkpoint of the original JAX code (use to-jax / to-torch)")
    _check_destination(source, destination, force, is_folder=framework == "jax")
    if framework == "jax":
        abstract = abstract_train_state(hp, UniversalAutoEncoder(hp),
                                        jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
        train_state, progress = restore_original(source, abstract)
        written = _write_jax_checkpoint(hp, train_state, progress, destination)
        return Converted(written, optimizer_count=int(_adam_state(train_state.opt_state).count),
                         notes=_original_notes(hp), **dataclasses.asdict(progress))

    try:
        state = load_checkpoint(source)
    except CheckpointError as error:
        raise ConversionError(str(error)) from None
    model, ema_model, optimizer, lr_schedule = _torch_training_objects(hp)
    progress = restore_training_state(state, model, ema_model, optimizer, lr_schedule)
    temporary = _temporary_destination(destination)
    save_checkpoint(training_state(progress, model, ema_model, optimizer, lr_schedule), temporary)
    _move_into_place(temporary, destination)
    return Converted(destination, optimizer_count=state[ORIGINAL_JAX_KEY].optimizer_count,
                     notes=_original_notes(hp), **dataclasses.asdict(progress))


def _original_notes(hp: Any) -> str:
    return (f"; not in the source, at their defaults: the skip counter (0) and the data position (epoch 0, "
            f"batch 0); the moments are read as optimizer.type = {hp.optimizer.type!r} (the file does not "
            "record the type)")


def main(argv: Sequence[str] | None = None) -> None:
    from efficient_vdvae_common.training_progress import CheckpointError
    from hparams.cli import add_config_arguments, load_config_or_exit

    parser = argparse.ArgumentParser(
        description="Convert training checkpoints between the PyTorch and JAX implementations: weights, EMA "
                    "weights, Adamax/Adam/RAdam moments, update and skip counters, data position. The converted "
                    "run resumes with train.py of the other implementation.",
        epilog="to-jax SRC DST: SRC a PyTorch checkpoint file (checkpoints-<name>), DST a new JAX checkpoint "
               "folder. to-torch SRC DST: SRC a JAX checkpoint folder, DST a new PyTorch checkpoint file. "
               "from-original-jax SRC DST --framework torch|jax: SRC a checkpoint of the original JAX code "
               "(checkpoint_<step>, msgpack file or orbax folder, or the checkpoints-<name> folder holding it; "
               "to-jax and to-torch recognise one too), DST as above. "
               "The config must describe the model that wrote SRC.")
    add_config_arguments(parser)
    parser.add_argument("direction", choices=("to-jax", "to-torch", "from-original-jax"))
    parser.add_argument("source", type=Path, metavar="SRC", help="the checkpoint to read")
    parser.add_argument("destination", type=Path, metavar="DST", help="the checkpoint to write")
    parser.add_argument("--step", type=int, default=None,
                        help="to-torch: convert checkpoint SRC/STEP instead of the latest")
    parser.add_argument("--framework", choices=("torch", "jax"), default=None,
                        help="from-original-jax: write a checkpoint of our PyTorch or our JAX implementation")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing DST (a checkpoint only; swapped in once the new one is complete)")
    args = parser.parse_args(argv)
    if args.step is not None and args.direction != "to-torch":
        parser.error("--step applies to to-torch only")
    if (args.framework is None) == (args.direction == "from-original-jax"):
        parser.error("--framework torch|jax is required with from-original-jax, and applies to it only")
    hp = load_config_or_exit(args, save=False)
    try:
        if args.direction == "from-original-jax":
            converted = original_jax_checkpoint_to(hp, args.source, args.destination, args.framework,
                                                   force=args.force)
        elif args.direction == "to-jax":
            converted = torch_checkpoint_to_jax(hp, args.source, args.destination, force=args.force)
        else:
            converted = jax_checkpoint_to_torch(hp, args.source, args.destination, step=args.step, force=args.force)
    except (CheckpointError, ConversionError, DiskWriteError) as error:
        print(f"convert_checkpoint: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONVERSION_ERROR) from None
    print(converted.summary())


if __name__ == "__main__":
    main()
