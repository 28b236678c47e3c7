"""Multi-node PyTorch training, with two "nodes" on this machine.

Each node is one `sh train.sh` with NNODES=2, NODE_RANK=0|1 and
RDZV_ENDPOINT=127.0.0.1:PORT (torchrun --nnodes=2 --rdzv_backend=c10d, one gloo
rank per node), exactly what a user runs on two machines. Node 0 starts first,
so that its torchrun hosts the rendezvous store, as the node at the endpoint
does on a real cluster. torchrun's c10d rendezvous assigns the global ranks
itself (NODE_RANK is not used; on one host, in start order), so the tests find
global rank 0's node by its output: only rank 0 prints the step lines.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from efficient_vdvae_torch.checkpoints import load_checkpoint

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SH = REPO_ROOT / "efficient_vdvae_torch" / "train.sh"
TRAIN_PY = REPO_ROOT / "efficient_vdvae_torch" / "train.py"
CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"
LOST_PROCESS = "lost contact with another training process"


def _env(**extra: str) -> dict[str, str]:
    # One thread per process: the nodes share the machine's cores.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Node:
    """One `sh train.sh` of a two-node run, its output in files (no pipe to fill up)."""

    def __init__(self, rank: int, cwd: Path, port: int, logs: Path, args: list[str], **env: str):
        self.rank, self.cwd = rank, cwd
        self.out_path, self.err_path = logs / f"node{rank}_{port}.out", logs / f"node{rank}_{port}.err"
        node_env = _env(NNODES="2", NODE_RANK=str(rank), RDZV_ENDPOINT=f"127.0.0.1:{port}",
                        RDZV_ID=f"test{port}", NUM_GPUS_PER_NODE="1", **env)
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            # A session of its own: the node's processes (launcher, rank, loader workers) are one group.
            self.process = subprocess.Popen(["sh", str(TRAIN_SH), *args], cwd=cwd, env=node_env, stdout=out,
                                            stderr=err, start_new_session=True)

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)


    def kill(self, signal_number: int = signal.SIGKILL, launcher: bool = True) -> None:
        """Signal every process of this node, as a machine that dies: the launcher's group and the
        groups of its ranks (torchrun starts each rank in a session of its own, with its workers).
        launcher=False: the ranks alone (a crash that torchrun sees)."""
        groups = {self.process.pid} if launcher else set()
        for pid in _descendants(self.process.pid):
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
        if not launcher:
            groups.discard(self.process.pid)  # helpers of torchrun in its own group
        for group in sorted(groups):
            try:
                os.killpg(group, signal_number)
            except ProcessLookupError:
                pass

    def check(self, returncode: int) -> None:
        assert returncode == 0, f"node {self.rank} exit {returncode}\n{self.out[-3000:]}\n{self.err[-3000:]}"


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren... of `pid` (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _wait_for_rank0(nodes: list[Node], text: str, timeout: float = 600) -> tuple[Node, Node]:
    """(global rank 0's node, the other node), once rank 0 printed `text`."""
    deadline = time.monotonic() + timeout
    while True:
        for index, node in enumerate(nodes):
            if text in node.out:
                return node, nodes[1 - index]
        for node in nodes:
            assert node.process.poll() is None, f"node {node.rank} exited:\n{node.err[-3000:]}"
        assert time.monotonic() < deadline, f"no node printed {text!r}:\n{nodes[0].out[-2000:]}"
        time.sleep(0.2)


def _wait_listening(port: int, node: Node, timeout: float = 120) -> None:
    """Until node 0's torchrun accepts connections on the rendezvous port."""
    deadline = time.monotonic() + timeout
    while True:
        assert node.process.poll() is None, f"node 0 exited {node.process.returncode}:\n{node.err[-3000:]}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, "node 0 never opened the rendezvous port"
            time.sleep(0.2)


def _start_two_nodes(cwds: tuple[Path, Path], logs: Path, args: list[str], **env: str) -> tuple[Node, Node]:
    port = _free_port()
    node0 = Node(0, cwds[0], port, logs, args, **env)
    _wait_listening(port, node0)
    return node0, Node(1, cwds[1], port, logs, args, **env)


@pytest.fixture
def nodes():
    """Nodes started by a test; whatever is left of them is killed at the end."""
    started: list[Node] = []
    yield started
    for node in started:
        if node.process.poll() is None:
            node.kill()
            node.process.wait(timeout=30)


def _files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*"))


@pytest.mark.slow  # two 2-node launches and one process on a shared CPU: about 1-2 minutes
def test_two_nodes_match_one_process(run_overrides, tmp_path, assert_same_tree, nodes):
    """Same global batch (4 = 2 nodes x 2), same seed: the weights after the first real update
    agree with one process to float32 precision (settings as the 2-rank test of
    test_trainer_processes.py). This needs the sampler and the latent noise to split by the
    global rank: split by the local rank (0 on both nodes), both would train on the same images.

    Each node runs in a folder of its own (no shared filesystem): node 1 (global rank 1) writes
    nothing there; rank 0 writes the checkpoint, logs and saved config."""
    overrides = run_overrides("multinode", "train.total_train_steps=2", "train.checkpoint_and_eval_interval_in_steps=2",
                              "optimizer.epsilon=1e-4", "run.num_gpus=2", "run.distributed_timeout_seconds=120")
    folders = [tmp_path / name for name in ("node0", "node1", "one_process")]
    for folder in folders:
        folder.mkdir()
    nodes.extend(_start_two_nodes((folders[0], folders[1]), tmp_path, ["--config", str(CONFIG), "--set", *overrides]))
    for node in nodes:
        node.check(node.wait(timeout=600))
    one = subprocess.run([sys.executable, str(TRAIN_PY), "--config", str(CONFIG), "--set", *overrides],
                         cwd=folders[2], env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    main, other = _wait_for_rank0(nodes, "finished at step 2", timeout=0)
    two_nodes, one_process = load_checkpoint(main.cwd / "checkpoints-multinode"), load_checkpoint(
        folders[2] / "checkpoints-multinode")
    assert two_nodes["global_step"] == one_process["global_step"] == 2
    for key in ("model_state_dict", "ema_model_state_dict", "optimizer_state_dict"):
        assert_same_tree(two_nodes[key], one_process[key], key, atol=1e-6)
    initial = two_nodes["ema_model_state_dict"]["top_down.output_conv.weight"]
    assert (two_nodes["model_state_dict"]["top_down.output_conv.weight"] - initial).abs().max() > 1e-4

    assert _files_under(other.cwd) == []  # global rank 1 wrote no checkpoint, log or config
    assert (main.cwd / "logs-multinode" / "hparams-multinode.cfg").is_file()
    assert len(list((main.cwd / "logs-multinode" / "train").iterdir())) == 1  # one events file
    assert "finished at step 2" not in other.out


@pytest.mark.slow  # one process and one 2-node start-up: about a minute
def test_nodes_that_do_not_share_the_run_folder_are_refused(run_overrides, tmp_path, nodes):
    """Node 0 sees a checkpoint, node 1 (another machine, no shared filesystem) does not: resuming
    would train rank 1 from fresh optimiser state and step 0. Every rank stops with exit 2 and one
    message naming the checkpoint, before any update."""
    overrides = run_overrides("unshared", "train.total_train_steps=1", "run.distributed_timeout_seconds=120")
    node0_dir, node1_dir = tmp_path / "node0", tmp_path / "node1"
    node0_dir.mkdir()
    node1_dir.mkdir()
    first = subprocess.run([sys.executable, str(TRAIN_PY), "--config", str(CONFIG), "--set", *overrides],
                           cwd=node0_dir, env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]

    more = [*overrides, "train.total_train_steps=3", "run.num_gpus=2"]
    nodes.extend(_start_two_nodes((node0_dir, node1_dir), tmp_path, ["--config", str(CONFIG), "--set", *more]))
    for node in nodes:
        assert node.wait(timeout=300) != 0
        assert "do not resume from the same checkpoint" in node.err, node.err[-3000:]
        assert "shared filesystem" in node.err
    assert load_checkpoint(node0_dir / "checkpoints-unshared")["global_step"] == 1
    assert _files_under(node1_dir) == []


@pytest.mark.slow  # a 2-node run, killed, then resumed: about 2 minutes on a shared CPU
@pytest.mark.parametrize("dying", ["rank 1", "rank 0"])  # rank 0's node also hosts the rendezvous
def test_a_lost_node_ends_the_run_and_both_nodes_resume(run_overrides, tmp_path, nodes, dying):
    """SIGKILL to every process of one node mid-run (a machine that dies): the other stops soon
    with a message and a non-zero exit, keeping the last checkpoint; the same command on both
    nodes resumes from it and the step count continues. Both nodes share one folder, as on a
    cluster's shared filesystem."""
    overrides = run_overrides("lost", "train.total_train_steps=100000", "train.checkpoint_and_eval_interval_in_steps=2",
                              "run.num_gpus=2", "run.distributed_timeout_seconds=60")
    shared = tmp_path / "shared"
    shared.mkdir()
    nodes.extend(_start_two_nodes((shared, shared), tmp_path, ["--config", str(CONFIG), "--set", *overrides]))
    main, other = _wait_for_rank0(nodes, "step 3/")  # the checkpoint of step 2 is written
    victim, survivor = (other, main) if dying == "rank 1" else (main, other)
    victim.kill()
    killed = time.monotonic()
    returncode = survivor.wait(timeout=120)
    seconds = time.monotonic() - killed
    assert returncode != 0
    assert LOST_PROCESS in survivor.err, survivor.err[-3000:]
    assert "start the same command again on every node" in survivor.err
    saved = load_checkpoint(shared / "checkpoints-lost")
    step = saved["global_step"]
    assert step >= 2 and step % 2 == 0
    assert f"checkpoint {Path('checkpoints-lost')} (step {step}) is kept" in survivor.err
    print(f"the node of the other rank stopped {seconds:.1f} s after {dying}'s node was killed, "
          f"checkpoint at step {step}")
    assert seconds < 60

    nodes.clear()
    resumed = [*overrides, f"train.total_train_steps={step + 2}"]
    nodes.extend(_start_two_nodes((shared, shared), tmp_path, ["--config", str(CONFIG), "--set", *resumed]))
    for node in nodes:
        node.check(node.wait(timeout=600))
    main, _ = _wait_for_rank0(nodes, f"resuming run 'lost' at step {step}", timeout=0)
    assert f"finished at step {step + 2}" in main.out
    state = load_checkpoint(shared / "checkpoints-lost")
    assert state["global_step"] == step + 2
    # The data position continued too (3 batches per epoch, no skipped update in this run).
    assert state["data_epoch"] * 3 + state["data_batch"] == step + 2 + state["gradient_skip_count"]


@pytest.mark.slow  # a 2-node run, one crash, one restart: about 2 minutes
def test_max_restarts_restarts_every_node_from_the_last_checkpoint(run_overrides, tmp_path, nodes):
    """MAX_RESTARTS=1 (torchrun --max-restarts=1): node 1's rank crashes (SIGKILL, its torchrun
    lives); both torchruns restart their ranks, which resume from the last checkpoint and finish
    the run; both nodes exit 0."""
    overrides = run_overrides("elastic", "train.total_train_steps=8", "train.checkpoint_and_eval_interval_in_steps=2",
                              "run.num_gpus=2", "run.distributed_timeout_seconds=60")
    shared = tmp_path / "shared"
    shared.mkdir()
    nodes.extend(_start_two_nodes((shared, shared), tmp_path, ["--config", str(CONFIG), "--set", *overrides],
                                  MAX_RESTARTS="1"))
    main, other = _wait_for_rank0(nodes, "step 3/")
    other.kill(launcher=False)
    for node in nodes:
        node.check(node.wait(timeout=600))
    assert LOST_PROCESS in main.err
    # The restart may give rank 0 to either node (same hosts, same torchruns: in practice the same).
    output = main.out + other.out
    resumed = [line for line in output.splitlines() if line.startswith("resuming run 'elastic' at step ")]
    assert len(resumed) == 1, output[-3000:]
    restart_step = int(resumed[0].split()[5])
    assert restart_step >= 2 and restart_step % 2 == 0
    assert "finished at step 8" in output
    assert load_checkpoint(shared / "checkpoints-elastic")["global_step"] == 8


@pytest.mark.slow  # a 2-node run whose node 1 freezes: about a minute
def test_a_node_that_stops_answering_ends_the_run_after_the_timeout(run_overrides, tmp_path, nodes):
    """SIGSTOP freezes node 1 with its connections open (as a machine that hangs or drops off the
    network without closing them): node 0 gives up after run.distributed_timeout_seconds, with the
    message, instead of waiting for ever."""
    timeout = 15
    overrides = run_overrides("frozen", "train.total_train_steps=100000",
                              "train.checkpoint_and_eval_interval_in_steps=2", "run.num_gpus=2",
                              f"run.distributed_timeout_seconds={timeout}")
    shared = tmp_path / "shared"
    shared.mkdir()
    nodes.extend(_start_two_nodes((shared, shared), tmp_path, ["--config", str(CONFIG), "--set", *overrides]))
    main, other = _wait_for_rank0(nodes, "step 3/")
    other.kill(signal.SIGSTOP)
    frozen = time.monotonic()
    returncode = main.wait(timeout=timeout + 120)
    seconds = time.monotonic() - frozen
    other.kill(signal.SIGKILL)
    assert returncode != 0
    assert LOST_PROCESS in main.err, main.err[-3000:]
    assert f"run.distributed_timeout_seconds = {timeout} s" in main.err
    print(f"rank 0's node stopped {seconds:.1f} s after the other node froze (timeout {timeout} s)")
    assert timeout - 1 < seconds < timeout + 60


@pytest.mark.slow  # a 2-node run stopped by SIGTERM: about a minute
def test_sigterm_to_every_node_checkpoints_and_exits_0(run_overrides, tmp_path, nodes):
    """As `scancel` or `#SBATCH --signal=TERM@...` does: SIGTERM to each node's train.sh (the
    launcher, which forwards it to its ranks). The ranks agree on the step to stop after, rank 0
    checkpoints it, and both nodes exit 0."""
    overrides = run_overrides("term", "train.total_train_steps=100000",
                              "train.checkpoint_and_eval_interval_in_steps=100000", "run.num_gpus=2")
    shared = tmp_path / "shared"
    shared.mkdir()
    nodes.extend(_start_two_nodes((shared, shared), tmp_path, ["--config", str(CONFIG), "--set", *overrides]))
    main, _ = _wait_for_rank0(nodes, "step 2/")
    for node in nodes:
        node.process.send_signal(signal.SIGTERM)
    for node in nodes:
        node.check(node.wait(timeout=180))
    state = load_checkpoint(shared / "checkpoints-term")
    assert state["global_step"] >= 2
    assert f"stopped by signal at step {state['global_step']}" in main.out
    assert "Traceback" not in "".join(node.err for node in nodes)


@pytest.mark.parametrize("env, message", [
    ({"NNODES": "two"}, "NNODES=two: expected a positive whole number"),
    ({"NNODES": "0"}, "NNODES=0: expected a positive whole number"),
    ({"NNODES": "2", "NODE_RANK": "2", "RDZV_ENDPOINT": "127.0.0.1:1"}, "NODE_RANK=2: expected 0..1"),
    ({"NNODES": "2", "NODE_RANK": "-1", "RDZV_ENDPOINT": "127.0.0.1:1"}, "NODE_RANK=-1: expected 0..1"),
    ({"MAX_RESTARTS": "some"}, "MAX_RESTARTS=some: expected a whole number"),
])
def test_train_sh_refuses_bad_node_settings(tmp_path, env, message):
    """One line naming the variable and exit 2, before anything starts."""
    result = subprocess.run(["sh", str(TRAIN_SH)], cwd=tmp_path, env=_env(NUM_GPUS_PER_NODE="1", **env),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert _files_under(tmp_path) == []
