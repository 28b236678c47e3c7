"""Synthesis on several devices (issue 13 item 1, issue 15): 2 gloo ranks (PyTorch, torchrun through
synthesize.sh), 2 forced CPU devices (JAX) and 2 JAX processes of one CPU device each (jax.distributed on
127.0.0.1) give the numbers and files of one device, on 5 images in batches of 3 (padded rows,
and a rank/device with no image in the last batch). The layout and the noise premises are checked fast."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_common.encodings import read_encodings
from efficient_vdvae_common.synthesis_files import div_stats_path, encodings_path, reconstruction_dir
from efficient_vdvae_common.synthesis_shards import shard_data, sharded_batches
from efficient_vdvae_common.variate_masks import save_div_stats
from hparams import load_config
from tests.helpers import jax_env

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[2]
SYNTHESIZE = {"torch": REPO_ROOT / "efficient_vdvae_torch" / "synthesize.py",
              "jax": REPO_ROOT / "efficient_vdvae_jax" / "synthesize.py"}
SYNTHESIZE_SH = REPO_ROOT / "efficient_vdvae_torch" / "synthesize.sh"
FIXTURES = {"torch": ("torch_run", "tiny"), "jax": ("jax_run", "tiny_jax"), "jax-processes": ("jax_run", "tiny_jax")}
NUM_IMAGES = 5
BATCH = 3  # batches of 3 and 2 images: on 2 devices rows [0 1 | 2 pad] and [0 1 | pad pad]


# ---- Fast: the layout, the loader, and the noise premises.

@pytest.mark.parametrize("num_items, batch_size, shards", [(5, 3, 2), (7, 4, 3), (6, 2, 4), (1, 5, 2), (0, 3, 2)])
def test_every_image_is_in_exactly_one_shard_in_its_one_device_row(num_items, batch_size, shards):
    one = sharded_batches(num_items, batch_size, 1)
    many = sharded_batches(num_items, batch_size, shards)
    assert len(many) == len(one) == -(-num_items // batch_size)
    seen = []
    for a, b in zip(one, many):
        assert b.padded_size % shards == 0 and b.padded_size >= b.size and b.width == -(-batch_size // shards)
        parts = [b.images(range(s, s + 1)) for s in range(shards)]
        assert [i for part in parts for i in part] == list(a.images(range(1)))  # shard order == one-device order
        masks = [b.mask(range(s, s + 1)) for s in range(shards)]
        assert all(len(m) == b.width for m in masks)
        assert np.concatenate(masks).tolist() == [True] * b.size + [False] * (b.padded_size - b.size)
        assert list(b.images(range(shards))) == list(a.images(range(1)))
        seen += list(a.images(range(1)))
    assert seen == list(range(num_items))


def test_shards_read_their_rows_of_the_one_device_batches(torch_run):
    from efficient_vdvae_common.data import run_split
    from efficient_vdvae_torch.data.official import load_official_images

    hp = load_config(torch_run.saved_config)
    split = run_split(hp, "synthesis", load_official_images)  # 6 images
    one = list(shard_data(split, 4, 1, range(1)))
    for shards in (2, 3):
        per_shard = [list(shard_data(split, 4, shards, range(s, s + 1), workers=1)) for s in range(shards)]
        for b, reference in enumerate(one):
            real = [part[b].x[part[b].mask] for part in per_shard]
            np.testing.assert_array_equal(np.concatenate(real), reference.x[reference.mask])
            assert all(part[b].names == reference.names for part in per_shard)
            assert all(not part[b].x[~part[b].mask].any() for part in per_shard)  # zero padding
        # A process holding several shards reads them as one block.
        both = list(shard_data(split, 4, shards, range(0, shards)))
        for b, reference in enumerate(one):
            np.testing.assert_array_equal(both[b].x[both[b].mask], reference.x[reference.mask])


def test_jax_noise_of_a_row_does_not_depend_on_the_padded_batch_length():
    """The premise of JAX's device padding: row r of a draw is the same in a batch of B or of n * w rows."""
    import jax

    assert jax.config.jax_threefry_partitionable
    key = jax.random.fold_in(jax.random.PRNGKey(3), 1)
    for draw in (jax.random.normal, jax.random.uniform):
        np.testing.assert_array_equal(np.asarray(draw(key, (3, 4, 4, 2))), np.asarray(draw(key, (4, 4, 4, 2)))[:3])


def test_torch_noise_of_an_image_does_not_depend_on_its_batch(torch_run):
    import torch

    from efficient_vdvae_common.synthesis_shards import POSTERIOR_STREAM
    from efficient_vdvae_torch.synthesis import image_noise

    hp = load_config(torch_run.saved_config)
    whole = image_noise(hp, POSTERIOR_STREAM, range(0, 4), torch.device("cpu"))
    part = image_noise(hp, POSTERIOR_STREAM, range(2, 4), torch.device("cpu"))
    other = image_noise(hp, POSTERIOR_STREAM + 1, range(2, 4), torch.device("cpu"))
    for w, p, o in zip(whole, part, other):
        torch.testing.assert_close(w[2:], p, rtol=0, atol=0)
        assert not torch.equal(p, o)


# ---- Slow: the real entry points on 1 and 2 devices.

def _run_folder(run, name: str, destination: Path) -> Path:
    """A copy of the tiny run (checkpoint and saved config) with 5 of its synthesis images."""
    destination.mkdir(parents=True)
    for item in (f"checkpoints-{name}",):
        source = run.root / item
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, destination / item)
    (destination / f"logs-{name}").mkdir()
    shutil.copy2(run.logs / f"hparams-{name}.cfg", destination / f"logs-{name}")
    images = destination / "images"
    for path in sorted((run.images / "synthesis").rglob("*.png"))[:NUM_IMAGES]:
        target = images / path.relative_to(run.images / "synthesis")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return destination


def _overrides(name: str, root: Path, mode: str) -> list[str]:
    return ["--config", str(root / f"logs-{name}" / f"hparams-{name}.cfg"), "--set", f"run.name={name}",
            f"synthesis.synthesis_mode={mode}", f"synthesis.batch_size={BATCH}",
            f"data.synthesis_data_path='{root / 'images'}'", f"data.train_data_path='{root / 'images'}'",
            "synthesis.div_stats_subset_ratio=1.0", "synthesis.num_importance_samples=2",
            "synthesis.variate_masks_quantile=0.5",
            "run.num_cpus=1"]


def _torch_env() -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def _run_torch(name: str, root: Path, modes: list[str], devices: int) -> str:
    stdout = ""
    for mode in modes:
        arguments = _overrides(name, root, mode)
        if devices == 1:
            command = [sys.executable, str(SYNTHESIZE["torch"]), *arguments]
            env = _torch_env()
        else:
            command = ["sh", str(SYNTHESIZE_SH), *arguments]
            env = {**_torch_env(), "NUM_GPUS_PER_NODE": str(devices), "PYTHON": sys.executable}
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{mode}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        stdout += result.stdout
    return stdout


JAX_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    from efficient_vdvae_jax.distributed import init_distributed, shutdown_distributed
    from efficient_vdvae_jax.synthesize import main
    init_distributed()  # the JAX_COORDINATOR_ADDRESS environment, when set; main() keeps the group
    assert jax.device_count() == int(sys.argv[1]), jax.devices()
    for arguments in sys.argv[2:]:
        assert main(arguments.split("\\x1f")) == 0
    shutdown_distributed()
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_jax(name: str, root: Path, modes: list[str], devices: int, processes: int = 1) -> str:
    """One process per mode list (JAX's start-up once; "\\x1f" separates a mode's arguments); with
    `processes` > 1, that many processes of devices / processes CPU devices joined on 127.0.0.1."""
    calls = ["\x1f".join(_overrides(name, root, mode)) for mode in modes]
    command = [sys.executable, "-c", JAX_SCRIPT, str(devices), *calls]
    env = {**jax_env(devices // processes), "PYTHONPATH": str(REPO_ROOT)}
    if processes == 1:
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        return result.stdout
    address = f"127.0.0.1:{_free_port()}"
    started = [subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**env, "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(processes),
                                     "JAX_PROCESS_ID": str(rank)}) for rank in range(processes)]
    try:
        outputs = [process.communicate(timeout=900) for process in started]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
    for process, (stdout, stderr) in zip(started, outputs):
        assert process.returncode == 0, f"{stdout[-2000:]}\n{stderr[-4000:]}"
    assert all("NELBO" not in stdout and "wrote" not in stdout for stdout, _ in outputs[1:])  # process 0 reports
    return outputs[0][0]


def _run_jax_processes(name: str, root: Path, modes: list[str], devices: int) -> str:
    return _run_jax(name, root, modes, devices, processes=devices)


RUNNERS = {"torch": _run_torch, "jax": _run_jax, "jax-processes": _run_jax_processes}
METRIC = re.compile(r"NELBO (-?[0-9.]+) \| IW-NLL \(K=2\) (-?[0-9.]+) \| reconstruction (-?[0-9.]+) \| "
                    r"KL (-?[0-9.]+) \| SSIM (-?[0-9.]+) \| (\d+) images")


def _outcome(framework: str, run, name: str, root: Path, devices: int) -> dict:
    """div_stats, reconstruction (with the K = 2 bound) and (with a fixed div_stats, so that both see the same
    masks) encoding, on `devices` devices."""
    logs = root / f"logs-{name}"
    runner = RUNNERS[framework]
    runner(name, root, ["div_stats"], devices)
    computed = np.load(div_stats_path(logs))
    # Half of the variates kept (quantile 0.5): masked-off ones take prior samples.
    save_div_stats(div_stats_path(logs), np.random.default_rng(0).random(computed.shape).astype(np.float32))
    stdout = runner(name, root, ["reconstruction", "encoding"], devices)
    [metrics] = METRIC.findall(stdout)
    pngs = {p.relative_to(reconstruction_dir(logs)).as_posix(): np.asarray(Image.open(p))
            for p in reconstruction_dir(logs).rglob("*.png")}
    return {"div_stats": computed, "metrics": [float(v) for v in metrics], "encodings": read_encodings(
        encodings_path(logs)), "pngs": pngs, "files": sorted(p.relative_to(logs).as_posix()
                                                           for p in logs.rglob("*") if p.is_file())}


@pytest.mark.slow  # torchrun, or JAX processes compiling every mode: 1-3 minutes each
@pytest.mark.parametrize("framework", ["torch", "jax", "jax-processes"])
def test_two_devices_give_the_one_device_results(framework, request, tmp_path):
    fixture, name = FIXTURES[framework]
    run = request.getfixturevalue(fixture)
    one = _outcome(framework, run, name, _run_folder(run, name, tmp_path / "one"), 1)
    two = _outcome(framework, run, name, _run_folder(run, name, tmp_path / "two"), 2)
    print(f"{framework} metrics (NELBO, IW-NLL, reconstruction, KL, SSIM, images): 1 device {one['metrics']}, "
          f"2 devices {two['metrics']}")
    print(f"{framework} div_stats max |1 - 2| = {np.abs(one['div_stats'] - two['div_stats']).max():.3g}")

    assert one["metrics"][-1] == two["metrics"][-1] == NUM_IMAGES  # every image exactly once
    np.testing.assert_allclose(two["metrics"], one["metrics"], rtol=0, atol=2e-6)  # printed with 6 decimals
    np.testing.assert_allclose(two["div_stats"], one["div_stats"], rtol=1e-5, atol=1e-7)
    assert two["encodings"].file_names == one["encodings"].file_names and len(one["encodings"].file_names) == 5
    assert sorted(two["encodings"].groups) == sorted(one["encodings"].groups)
    for g, group in one["encodings"].groups.items():
        np.testing.assert_array_equal(two["encodings"].groups[g].variates, group.variates)
        np.testing.assert_allclose(two["encodings"].groups[g].posterior, group.posterior, rtol=1e-5, atol=1e-6)
    # Rank / process 0 wrote each file once, the other wrote nothing else; the sampled images agree.
    assert two["files"] == one["files"]
    assert sorted(two["pngs"]) == sorted(one["pngs"]) and len(one["pngs"]) >= NUM_IMAGES
    for path, image in one["pngs"].items():
        assert np.abs(two["pngs"][path].astype(int) - image.astype(int)).max() <= 1, path
