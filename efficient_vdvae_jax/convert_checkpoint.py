"""Convert weights between PyTorch state_dicts (original key naming) and flax params (SPEC.md section 10).

Our flax tree mirrors the PyTorch keys: a key's numeric parts are glued to the
name before them (`levels_down.2.0` <-> `levels_down_2_0`, `convs.1` <->
`convs_1`) and `weight` is called `kernel`. The values change layout:
conv kernels (out, in, kh, kw) <-> (kh, kw, in, out); `trainable_h` and
`scale_bias` NCHW <-> NHWC; the output conv's MoL channels (C, 3M) <-> (3M, C)
(SPEC.md section 5).

Checkpoint files, both ways (weights, EMA weights, step and skip count; the
optimiser moments stay behind, a converted run resumes with fresh ones):

    python efficient_vdvae_jax/convert_checkpoint.py to-jax checkpoints-NAME jax_weights.npz --config CFG
    python efficient_vdvae_jax/convert_checkpoint.py to-torch jax_weights.npz checkpoints-NAME --config CFG

A JAX checkpoint here is an `.npz` of flat `params/...`, `ema_params/...`,
`step` and `skipped_updates` arrays: it loads without executing code.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from efficient_vdvae_jax.model.autoencoder import output_channels  # noqa: E402

_NUMBERED_NAME = re.compile(r"^(.*?)((?:_\d+)+)$")
_NHWC_PARAMS = ("trainable_h", "scale_bias")
OUTPUT_CONV = ("top_down", "output_conv")


def torch_key_to_flax_path(key: str) -> tuple[str, ...]:
    """'top_down.levels_down.2.0.prior_net.0.convs.1.weight' -> (..., 'levels_down_2_0', ..., 'convs_1', 'kernel')."""
    path: list[str] = []
    for part in key.split("."):
        if part.isdigit():
            if not path:
                raise ValueError(f"state_dict key {key!r} starts with a number")
            path[-1] += f"_{part}"
        else:
            path.append(part)
    if path[-1] == "weight":
        path[-1] = "kernel"
    return tuple(path)


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
    """The inverse of `torch_key_to_flax_path`."""
    parts = []
    for i, name in enumerate(path):
        if i == len(path) - 1 and name == "kernel":
            parts.append("weight")
            continue
        match = _NUMBERED_NAME.match(name)
        if match:
            parts.append(match.group(1))
            parts.extend(match.group(2)[1:].split("_"))
        else:
            parts.append(name)
    return ".".join(parts)


def mol_channel_permutation(hp: Any) -> np.ndarray | None:
    """`perm` with jax_channels = torch_channels[perm] for the output conv, None when nothing moves.

    jax[M + j*C + c] = torch[M + c*3M + j] for j < 3M, c < C; the M mixture logits stay first.
    """
    if hp.data.dataset_source == "binarized_mnist":
        return None
    m, c = hp.model.num_output_mixtures, hp.data.channels
    j, ch = np.meshgrid(np.arange(3 * m), np.arange(c), indexing="ij")  # jax order: j major, c minor
    perm = np.concatenate([np.arange(m), m + ch.reshape(-1) * 3 * m + j.reshape(-1)])
    assert perm.size == output_channels(hp)
    return perm


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _set_nested(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix + (name,)))
        else:
            flat[prefix + (name,)] = value
    return flat


def torch_state_dict_to_flax_params(hp: Any, state_dict: Mapping[str, Any]) -> dict:
    """A nested dict of numpy arrays for `model.apply({'params': ...}, ...)`.

    `state_dict`: torch tensors or numpy arrays (a loaded `weights.npz` works).
    """
    perm = mol_channel_permutation(hp)
    params: dict = {}
    for key, value in state_dict.items():
        array = _as_numpy(value)
        path = torch_key_to_flax_path(key)
        if path[-1] == "kernel":
            if array.ndim != 4:
                raise ValueError(f"state_dict entry {key!r}: expected a 4-d conv weight, got shape {array.shape}")
            array = array.transpose(2, 3, 1, 0)
        elif path[-1] in _NHWC_PARAMS:
            array = array.transpose(0, 2, 3, 1)
        if path[:-1] == OUTPUT_CONV and perm is not None:
            array = array[..., perm]
        _set_nested(params, path, np.ascontiguousarray(array))
    return params


def flax_params_to_torch_state_dict(hp: Any, params: Mapping) -> dict[str, np.ndarray]:
    """The inverse of `torch_state_dict_to_flax_params`: numpy arrays under the original PyTorch keys.

    (`{k: torch.from_numpy(v) for k, v in ...}` makes it loadable with `load_state_dict`.)
    """
    perm = mol_channel_permutation(hp)
    inverse = None if perm is None else np.argsort(perm)
    state_dict = {}
    for path, value in _flatten(params).items():
        array = np.asarray(value)
        if path[:-1] == OUTPUT_CONV and inverse is not None:
            array = array[..., inverse]
        if path[-1] == "kernel":
            array = array.transpose(3, 2, 0, 1)
        elif path[-1] in _NHWC_PARAMS:
            array = array.transpose(0, 3, 1, 2)
        state_dict[flax_path_to_torch_key(path)] = np.ascontiguousarray(array)
    return state_dict


def save_jax_checkpoint(path: str | Path, params: Mapping, ema_params: Mapping, step: int,
                        skipped_updates: int = 0) -> None:
    """Write the weights, EMA weights and counters to one `.npz` file (atomically)."""
    arrays = {"step": np.asarray(step, np.int64), "skipped_updates": np.asarray(skipped_updates, np.int64)}
    for prefix, tree in (("params", params), ("ema_params", ema_params)):
        arrays.update({"/".join((prefix,) + p): np.asarray(v) for p, v in _flatten(tree).items()})
    path = Path(path)
    temp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(temp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(temp, path)


def load_jax_checkpoint(path: str | Path) -> dict[str, Any]:
    """{'params', 'ema_params', 'step', 'skipped_updates'} from `save_jax_checkpoint`'s file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read JAX checkpoint {path}: {error}") from error
    missing = {"step", "skipped_updates"} - arrays.keys()
    if missing:
        raise ValueError(f"JAX checkpoint {path} lacks {sorted(missing)}")
    trees: dict[str, dict] = {"params": {}, "ema_params": {}}
    for key, value in arrays.items():
        prefix, _, rest = key.partition("/")
        if prefix in trees:
            _set_nested(trees[prefix], tuple(rest.split("/")), value)
    return dict(trees, step=int(arrays["step"]), skipped_updates=int(arrays["skipped_updates"]))


def torch_checkpoint_to_jax(hp: Any, source: str | Path, destination: str | Path) -> None:
    """Our (or the original's) PyTorch checkpoint file -> a JAX checkpoint file."""
    # torch only for this direction of file conversion: the array converters above need no torch.
    from efficient_vdvae_torch.checkpoints import is_original_checkpoint, load_checkpoint

    state = load_checkpoint(source)
    if state is None:
        raise ValueError(f"no PyTorch checkpoint at {source}")
    # The original saved the index of its last step: step k means k + 1 updates ran.
    step = int(state["global_step"]) + (1 if is_original_checkpoint(state) else 0)
    save_jax_checkpoint(destination,
                        torch_state_dict_to_flax_params(hp, state["model_state_dict"]),
                        torch_state_dict_to_flax_params(hp, state["ema_model_state_dict"]),
                        step=step, skipped_updates=int(state.get("gradient_skip_count", 0)))


def jax_checkpoint_to_torch(hp: Any, source: str | Path, destination: str | Path) -> None:
    """A JAX checkpoint file -> our PyTorch checkpoint file (fresh optimiser moments, LR schedule at the step)."""
    import torch

    from efficient_vdvae_torch.checkpoints import TrainingProgress, save_checkpoint, training_state
    from efficient_vdvae_torch.model import UniversalAutoEncoder as TorchAutoEncoder
    from efficient_vdvae_torch.model.optimizers import build_optimizer as build_torch_optimizer
    from efficient_vdvae_torch.model.schedules import build_lr_schedule as build_torch_lr_schedule

    checkpoint = load_jax_checkpoint(source)

    def torch_model(params: Mapping) -> torch.nn.Module:
        model = TorchAutoEncoder(hp)
        state_dict = flax_params_to_torch_state_dict(hp, params)
        model.load_state_dict({k: torch.tensor(v) for k, v in state_dict.items()}, strict=True)
        return model

    model, ema_model = torch_model(checkpoint["params"]), torch_model(checkpoint["ema_params"])
    optimizer = build_torch_optimizer(hp, model)
    scheduler = build_torch_lr_schedule(hp, optimizer)
    scheduler.last_epoch = checkpoint["step"]
    for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(checkpoint["step"])
    progress = TrainingProgress(global_step=checkpoint["step"],
                                gradient_skip_count=checkpoint["skipped_updates"])
    save_checkpoint(training_state(progress, model, ema_model, optimizer, scheduler), destination)


def main(argv: Sequence[str] | None = None) -> None:
    from hparams.cli import add_config_arguments, load_config_or_exit

    parser = argparse.ArgumentParser(description="Convert checkpoints between the PyTorch and JAX implementations.")
    add_config_arguments(parser)
    parser.add_argument("direction", choices=("to-jax", "to-torch"))
    parser.add_argument("source")
    parser.add_argument("destination")
    args = parser.parse_args(argv)
    hp = load_config_or_exit(args, save=False)
    convert = torch_checkpoint_to_jax if args.direction == "to-jax" else jax_checkpoint_to_torch
    try:
        convert(hp, args.source, args.destination)
    except (ValueError, KeyError) as error:
        raise SystemExit(f"convert_checkpoint: {error}") from None
    print(f"wrote {args.destination}")


if __name__ == "__main__":
    main()
