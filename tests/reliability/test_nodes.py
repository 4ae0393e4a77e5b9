"""Two "nodes" on this machine (two launcher processes on 127.0.0.1, node ranks 0 and 1, one rank each): a dead
node is named by the survivors within the grace time; a pre-emption signal reaches the ranks through torchrun, and
the checkpoint resumes on another node layout (1 node x 2 ranks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import ok, summary, train_losses
from tests.reliability.helpers import TINY, rows, train
from tuneforge.distributed.dist import free_port

GRACE_S = 5


def start_nodes(tmp_path, *overrides, faults: str):
    """`tuneforge train` once per node, each in its own process group (so a whole node can be killed)."""
    port = free_port()
    args = [*TINY, "trainer.nproc=1", "launcher.nnodes=2", f"launcher.master_port={port}", f"launcher.grace_s={GRACE_S}",
            f"trainer.output_dir={tmp_path / 'run'}", *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNEFORGE_FAULTS": faults}
    return [subprocess.Popen([sys.executable, "-m", "tuneforge", "train", *args, f"launcher.node_rank={i}"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for i in (0, 1)]


def wait_steps(run, n: int, nodes, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.jsonl").is_file() and len(train_losses(run)) >= n:
            return
        if any(p.poll() is not None for p in nodes):
            raise AssertionError("a node ended early:\n" + "\n".join(p.communicate()[0][-3000:] for p in nodes))
        time.sleep(0.3)
    raise AssertionError(f"{run} never reached step {n}")


def test_dead_node_makes_the_other_exit_in_grace_time_naming_it(tmp_path):
    nodes = start_nodes(tmp_path, "trainer.max_steps=40", faults="slow@step:ms=300")
    wait_steps(tmp_path / "run", 2, nodes)
    os.killpg(nodes[1].pid, signal.SIGKILL)  # node 1 vanishes: its launcher and its rank
    t0 = time.time()
    out = nodes[0].communicate(timeout=300)[0]
    took = time.time() - t0
    assert nodes[0].returncode not in (0, 3), out[-3000:]
    assert "lost rank 1 (node 1)" in out, out[-3000:]
    assert took < GRACE_S + 30, f"node 0 took {took:.0f} s to exit"
    assert summary(tmp_path / "run")["status"] == "failed"


def test_torchrun_preemption_resumes_on_another_node_layout(tmp_path):
    """launcher=torchrun on two nodes: SIGUSR1 to node 0's launcher reaches its rank through torchrun; both nodes
    commit one checkpoint and exit 3. The run then resumes on one node of two ranks (launcher=local)."""
    nodes = start_nodes(tmp_path, "launcher=torchrun", "trainer.max_steps=8", faults="slow@step:ms=1000:steps=3-8")
    wait_steps(tmp_path / "run", 2, nodes)
    nodes[0].send_signal(signal.SIGUSR1)
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [3, 3], "\n".join(o[-3000:] for o in outs)
    s = summary(tmp_path / "run")
    assert s["status"] == "preempted" and s["world_size"] == 2 and 2 <= s["steps"] < 8

    ok(train(tmp_path, "run", "trainer.nproc=2", "trainer.max_steps=8", "trainer.resume=auto"))
    assert f"resumed from {tmp_path / 'run'}/checkpoints/step_{s['steps']}" in (tmp_path / "run" / "train.log").read_text()
    assert [r["step"] for r in rows(tmp_path / "run")] == list(range(1, 9))
    assert summary(tmp_path / "run")["status"] == "completed"
