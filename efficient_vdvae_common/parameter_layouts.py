"""PyTorch state_dict keys and layouts <-> this project's flax parameter tree (SPEC.md section 10), numpy only.

Our flax tree mirrors the PyTorch keys: a key's numeric parts are glued to the
name before them (`levels_down.2.0` <-> `levels_down_2_0`, `convs.1` <->
`convs_1`) and `weight` is called `kernel`. The values change layout:
conv kernels (out, in, kh, kw) <-> (kh, kw, in, out); `trainable_h` and
`scale_bias` NCHW <-> NHWC; the output conv's MoL channels (C, 3M) <-> (3M, C)
(SPEC.md section 5). The JAX original's parameters have the flax layouts
(efficient_vdvae_common/original_jax_checkpoint.py maps its names).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from efficient_vdvae_common.architecture import is_binarized_mnist

_NUMBERED_NAME = re.compile(r"^(.*?)((?:_\d+)+)$")
NHWC_PARAMS = ("trainable_h", "scale_bias")
OUTPUT_CONV = ("top_down", "output_conv")
OUTPUT_CONV_KEY = "top_down.output_conv.weight"


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


def output_channel_permutation(num_mixtures: int, channels: int) -> np.ndarray:
    """`perm` with flax_channels = torch_channels[perm] for a MoL output conv of M mixtures, C colours.

    flax[M + j*C + c] = torch[M + c*3M + j] for j < 3M, c < C; the M mixture logits stay first.
    """
    m, c = num_mixtures, channels
    j, ch = np.meshgrid(np.arange(3 * m), np.arange(c), indexing="ij")  # flax order: j major, c minor
    return np.concatenate([np.arange(m), m + ch.reshape(-1) * 3 * m + j.reshape(-1)])


def mol_channel_permutation(hp: Any) -> np.ndarray | None:
    """The output conv's permutation for config `hp`, None when nothing moves (binarized MNIST's one logit)."""
    if is_binarized_mnist(hp):
        return None
    return output_channel_permutation(hp.model.num_output_mixtures, hp.data.channels)


def as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def set_nested(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix + (name,)))
        else:
            flat[prefix + (name,)] = value
    return flat


def torch_array_to_flax(key: str, array: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    """One state_dict entry in the flax layout (a fresh C-ordered copy)."""
    array = as_numpy(array)
    path = torch_key_to_flax_path(key)
    if path[-1] == "kernel":
        if array.ndim != 4:
            raise ValueError(f"state_dict entry {key!r}: expected a 4-d conv weight, got shape {array.shape}")
        array = array.transpose(2, 3, 1, 0)
    elif path[-1] in NHWC_PARAMS:
        array = array.transpose(0, 2, 3, 1)
    if path[:-1] == OUTPUT_CONV and perm is not None:
        array = array[..., perm]
    return np.array(array, order="C")  # a copy: never aliases a live tensor


def flax_array_to_torch(key: str, array: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    """The inverse of `torch_array_to_flax` for the entry that has torch key `key`."""
    array = np.asarray(array)
    path = torch_key_to_flax_path(key)
    if path[:-1] == OUTPUT_CONV and perm is not None:
        array = array[..., np.argsort(perm)]
    if path[-1] == "kernel":
        if array.ndim != 4:
            raise ValueError(f"parameter {'/'.join(path)}: expected a 4-d conv kernel, got shape {array.shape}")
        array = array.transpose(3, 2, 0, 1)
    elif path[-1] in NHWC_PARAMS:
        array = array.transpose(0, 3, 1, 2)
    return np.array(array, order="C")


def flax_shape(key: str, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The flax-layout shape of the state_dict entry `key` of shape `torch_shape`."""
    return tuple(torch_array_to_flax(key, np.empty(torch_shape, np.float32), None).shape)


def torch_state_dict_to_flax_params(hp: Any, state_dict: Mapping[str, Any]) -> dict:
    """A nested dict of numpy arrays for `model.apply({'params': ...}, ...)`.

    `state_dict`: torch tensors or numpy arrays (a loaded `weights.npz` works).
    """
    perm = mol_channel_permutation(hp)
    params: dict = {}
    for key, value in state_dict.items():
        set_nested(params, torch_key_to_flax_path(key), torch_array_to_flax(key, value, perm))
    return params


def flax_params_to_torch_state_dict(hp: Any, params: Mapping, perm: np.ndarray | None | str = "config"
                                    ) -> dict[str, np.ndarray]:
    """The inverse of `torch_state_dict_to_flax_params`: numpy arrays under the original PyTorch keys.

    (`{k: torch.from_numpy(v) for k, v in ...}` makes it loadable with `load_state_dict`.)
    `perm` overrides the config's output-channel permutation.
    """
    perm = mol_channel_permutation(hp) if isinstance(perm, str) else perm
    state_dict = {}
    for path, value in flatten(params).items():
        key = flax_path_to_torch_key(path)
        state_dict[key] = flax_array_to_torch(key, value, perm)
    return state_dict


MISSING = "missing"


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def first_shape_mismatch(saved: Mapping[Any, Any], wanted: Mapping[Any, Any]
                         ) -> tuple[Any, tuple[int, ...] | str, tuple[int, ...] | str] | None:
    """(key, saved shape, wanted shape) of the first entry that differs, `MISSING` for an absent side; None when
    all fit. Values are arrays or shapes; `saved`'s keys are checked in its order, then `wanted`'s others."""
    for key in list(saved) + [k for k in wanted if k not in saved]:
        saved_shape = _shape_of(saved[key]) if key in saved else MISSING
        wanted_shape = _shape_of(wanted[key]) if key in wanted else MISSING
        if saved_shape != wanted_shape:
            return key, saved_shape, wanted_shape
    return None
