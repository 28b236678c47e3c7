"""Checkpoints of the original JAX implementation, as numpy: names, layouts, optimiser state (SPEC.md section 10).

The original saves its flax train state (`step`, `params`, `opt_state`,
`ema_decay`, `ema_params`) either as one msgpack file (older flax; the
published checkpoints) or as an orbax PyTree folder (current flax), under
`checkpoints-<name>/checkpoint_<step>`. Reading those files is
efficient_vdvae_jax/original_checkpoint.py's job; this module takes the
restored nested dict and maps it onto this project's names.

Names: the original's tree is a renaming of the PyTorch keys, e.g.
`top_down/block_down_level_5_1/residual_block_0/conv_2/conv/kernel` <->
`top_down.levels_down.5.1.residual_block.0.convs.5.weight` (see `RENAMES`).
Values already have this project's flax layouts: HWIO kernels, NHWC
`trainable_h` and `scale_bias`, and the output conv's channels
`[M mixture logits | M + k*C + c]`.

Optimiser state: `opt_state` is the state of the chain
(Adam-family scaling, masked weight decay, learning-rate schedule), a dict
keyed '0', '1', '2' in msgpack, a list in orbax. The scaling's {count, mu, nu}
trees follow `params`; the schedule's {count} is the number of applied updates
like `step`. The original kept no skip counter and no data position.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from efficient_vdvae_common.parameter_layouts import (MISSING, OUTPUT_CONV_KEY, first_shape_mismatch,
                                                       flax_array_to_torch, flatten, output_channel_permutation,
                                                       set_nested, torch_key_to_flax_path)

CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)$")
TRAIN_STATE_KEYS = ("step", "params", "opt_state", "ema_decay", "ema_params")


class OriginalCheckpointError(ValueError):
    """An original-JAX checkpoint that cannot be used, named in the message."""


def _two_c_plus_one(match: re.Match) -> str:
    return str(2 * int(match.group("conv")) + 1)


# Applied in order to the '/'-joined path. A conv cell's c-th conv sits at index 2c + 1 of our
# `convs` (SiLUs at the even indices); the original wraps every flax Conv in a module named `conv`.
RENAMES: tuple[tuple[re.Pattern, str | Callable[[re.Match], str]], ...] = tuple(
    (re.compile(pattern), replacement) for pattern, replacement in (
        (r"^(?P<side>bottom_up|top_down)/", lambda m: m.group("side") + "."),
        (r"block_up_level_(\d+)_downsample/", r"levels_up_downsample.\1."),
        (r"block_up_level_(\d+)_(\d+)/", r"levels_up.\1.\2."),
        (r"block_down_level_(\d+)_upsample/", r"levels_down_upsample.\1."),
        (r"block_down_level_(\d+)_(\d+)/", r"levels_down.\1.\2."),
        (r"residual_block_(\d+)/conv_(?P<conv>\d+)/conv/",
         lambda m: f"residual_block.{m.group(1)}.convs.{_two_c_plus_one(m)}."),
        (r"(?P<net>prior_net|posterior_net)/conv_(?P<conv>\d+)/conv/",
         lambda m: f"{m.group('net')}.0.convs.{_two_c_plus_one(m)}."),
        (r"(prior|posterior)_gaussian_layer/projection/conv/", r"\1_layer.projection."),
        (r"z_projection/z_projection/conv/", "z_projection."),
        (r"unpooling_layer/conv/conv/", "unpool.ops.0."),  # before 'pooling_layer', which it contains
        (r"unpooling_layer/scale_bias$", "unpool.scale_bias"),
        (r"pooling_layer/conv/conv/", "pool.ops.0."),
        (r"(input_conv|output_conv|skip_projection)/conv/", r"\1."),
        (r"\.kernel$", ".weight"),
    ))


def original_path_to_torch_key(path: str) -> str:
    """'bottom_up/input_conv/conv/kernel' -> 'bottom_up.input_conv.weight'.

    A path of another layout comes back with '/' in it, which no model key has.
    """
    for pattern, replacement in RENAMES:
        path = pattern.sub(replacement, path)
    return path


@dataclasses.dataclass
class OriginalJaxState:
    """An original train state in this project's terms; trees keyed by PyTorch key, flax-layout numpy arrays."""
    source: Path
    step: int  # applied updates (the original's state.step)
    params: dict[str, np.ndarray]
    ema_params: dict[str, np.ndarray]
    mu: dict[str, np.ndarray]
    nu: dict[str, np.ndarray]
    optimizer_count: int  # the Adam-family scaling's count
    schedule_count: int  # the learning-rate schedule's count (the step of the next update's rate)
    ema_decay: float
    original_names: dict[str, str]  # PyTorch key -> the original's path

    @property
    def output_permutation(self) -> np.ndarray | None:
        """The output conv's flax<-torch channel permutation, read off the weights (None: one logit, MNIST).

        The input conv's kernel gives C, the output conv's width M (3C + 1).
        """
        channels = self.params["bottom_up.input_conv.weight"].shape[2]
        width = self.params[OUTPUT_CONV_KEY].shape[-1]
        if width % (3 * channels + 1):
            return None
        return output_channel_permutation(width // (3 * channels + 1), channels)

    def flax_tree(self, which: str) -> dict:
        """`params`, `ema_params`, `mu` or `nu` as our nested flax tree."""
        tree: dict = {}
        for key, value in getattr(self, which).items():
            set_nested(tree, torch_key_to_flax_path(key), value)
        return tree

    def torch_state_dict(self, which: str) -> dict[str, np.ndarray]:
        """`params`, `ema_params`, `mu` or `nu` in the PyTorch layout."""
        perm = self.output_permutation
        return {key: flax_array_to_torch(key, value, perm) for key, value in getattr(self, which).items()}

    def check_fits(self, wanted: Mapping[str, tuple[int, ...]]) -> None:
        """Raise naming the first parameter whose flax-layout shape differs from `wanted` (PyTorch key -> shape).

        The saved parameters are checked in the order of their original names, then the config's others."""
        def name(key: str) -> str:
            return self.original_names.get(key, key)

        mismatch = first_shape_mismatch({key: self.params[key] for key in sorted(self.params, key=name)}, wanted)
        if mismatch is None:
            return
        key, saved, config = mismatch
        where = f"checkpoint {self.source} does not fit the model config"
        if saved == MISSING:
            raise OriginalCheckpointError(f"{where}: it lacks the config's parameter {key} {config} (a checkpoint "
                                          "of another architecture?)")
        if config == MISSING:
            raise OriginalCheckpointError(f"{where}: parameter {name(key)} is {saved} there and missing in the "
                                          "config (a checkpoint of another architecture?)")
        raise OriginalCheckpointError(f"{where}: parameter {name(key)} is {saved} there and {config} in the config")

    def defaults_note(self) -> str:
        """What the original did not save, hence starts at its default."""
        return ("the original saved no skip counter and no data position: skipped updates start at 0, "
                "the data at the first batch of epoch 0")


def _by_torch_key(tree: Any, what: str, source: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not isinstance(tree, Mapping):
        raise OriginalCheckpointError(f"{source} is not a checkpoint of the original JAX code: its {what} is a "
                                      f"{type(tree).__name__}, not a tree of arrays")
    arrays, names = {}, {}
    for path, value in flatten(tree).items():
        original = "/".join(path)
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise OriginalCheckpointError(f"{source}: {what} leaf {original} has dtype {array.dtype}, not float")
        key = original_path_to_torch_key(original)
        arrays[key], names[key] = array, original
    return arrays, names


def _chain_states(opt_state: Any, source: Path) -> list[Any]:
    """The optax chain's states in order, from msgpack's {'0': .., '1': ..} or orbax's list."""
    if isinstance(opt_state, Mapping) and all(str(k).isdigit() for k in opt_state):
        return [opt_state[k] for k in sorted(opt_state, key=int)]
    if isinstance(opt_state, (list, tuple)):
        return list(opt_state)
    raise OriginalCheckpointError(f"{source}: opt_state is a {type(opt_state).__name__}, expected the states "
                                  "of an optax chain")


def parse_train_state(tree: Any, source: str | Path) -> OriginalJaxState:
    """The restored train state (nested dicts of numpy arrays) of an original checkpoint."""
    source = Path(source)
    if not isinstance(tree, Mapping) or not all(key in tree for key in TRAIN_STATE_KEYS):
        found = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise OriginalCheckpointError(f"{source} is not a checkpoint of the original JAX code: expected the keys "
                                      f"{list(TRAIN_STATE_KEYS)}, found {found}")
    params, names = _by_torch_key(tree["params"], "params", source)
    ema_params, _ = _by_torch_key(tree["ema_params"], "ema_params", source)
    if ema_params.keys() != params.keys():
        raise OriginalCheckpointError(f"{source}: ema_params and params hold different parameters")
    adam, schedule_counts = None, []
    for state in _chain_states(tree["opt_state"], source):
        if isinstance(state, Mapping) and {"count", "mu", "nu"} <= set(state):
            adam = state
        elif isinstance(state, Mapping) and set(state) == {"count"}:
            schedule_counts.append(int(np.asarray(state["count"])))
    if adam is None:
        raise OriginalCheckpointError(f"{source}: opt_state holds no Adam-family state (count, mu, nu)")
    mu, _ = _by_torch_key(adam["mu"], "opt_state mu", source)
    nu, _ = _by_torch_key(adam["nu"], "opt_state nu", source)
    for moment, tree_ in (("mu", mu), ("nu", nu)):
        if tree_.keys() != params.keys() or any(tree_[k].shape != params[k].shape for k in params):
            raise OriginalCheckpointError(f"{source}: the optimizer's {moment} does not have the tree of params")
    _refuse_even_kernels(params, names, source)
    step = int(np.asarray(tree["step"]))
    return OriginalJaxState(source=source, step=step, params=params, ema_params=ema_params, mu=mu, nu=nu,
                            optimizer_count=int(np.asarray(adam["count"])),
                            schedule_count=schedule_counts[-1] if schedule_counts else step,
                            ema_decay=float(np.asarray(tree["ema_decay"])), original_names=names)


# The pool convs (kernel = stride, no padding) are the only ones with stride > 1.
_UNPADDED_CONV = re.compile(r"(^|\.)pool\.ops\.0\.weight$")


def _refuse_even_kernels(params: Mapping[str, np.ndarray], names: Mapping[str, str], source: Path) -> None:
    """Refuse a stride-1 conv with an even kernel (k - s odd): the JAX original padded it with flax's 'SAME'
    (the odd pixel right/bottom) where this project follows the PyTorch original (left/top, SPEC.md section 2),
    so its weights would compute another function here. No published checkpoint has one."""
    for key, value in params.items():
        if key.endswith(".weight") and not _UNPADDED_CONV.search(key) and value.ndim == 4:
            height, width = value.shape[:2]
            if height % 2 == 0 or width % 2 == 0:
                raise OriginalCheckpointError(
                    f"checkpoint {source} has an even {height}x{width} kernel at {names.get(key, key)}: the original "
                    "JAX code padded even kernels with flax 'SAME' (extra pixel right/bottom), this project pads "
                    "as the PyTorch original (left/top, SPEC.md section 2), so these weights cannot be loaded")


def newest_checkpoint_in(folder: str | Path) -> Path | None:
    """The `checkpoint_<step>` entry of `folder` with the largest step, None when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), entry) for entry in folder.iterdir() if (m := CHECKPOINT_NAME.match(entry.name))]
    return max(found)[1] if found else None


def looks_like_original_msgpack(head: bytes) -> bool:
    """True when `head` (a file's first bytes) starts a msgpack map of the train state's 5 keys.

    A torch file starts with a zip header (b'PK') or a pickle (0x80 then the protocol).
    """
    return len(head) >= 2 and head[0] in (0x85, 0xDE) and head[:2] != b"PK"
