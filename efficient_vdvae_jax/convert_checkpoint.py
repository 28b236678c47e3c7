"""Convert weights between PyTorch state_dicts (original key naming) and flax params (SPEC.md section 10).

Our flax tree mirrors the PyTorch keys: a key's numeric parts are glued to the
name before them (`levels_down.2.0` <-> `levels_down_2_0`, `convs.1` <->
`convs_1`) and `weight` is called `kernel`. The values change layout:
conv kernels (out, in, kh, kw) <-> (kh, kw, in, out); `trainable_h` and
`scale_bias` NCHW <-> NHWC; the output conv's MoL channels (C, 3M) <-> (3M, C)
(SPEC.md section 5).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from efficient_vdvae_jax.model.autoencoder import output_channels

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
