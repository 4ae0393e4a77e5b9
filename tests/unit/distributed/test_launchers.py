"""The launchers' command lines and scripts, built from a composed run (no ranks start here: the runs are
tests/integration/test_train.py, tests/reliability/test_nodes.py and tests/integration/test_slurm.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuneforge import registry
from tuneforge.config.run import Run
from tuneforge.errors import InputError

BASE = ["recipe=quickstart_tiny"]


def run_of(tmp_path, *overrides):
    run = Run.compose([*BASE, *overrides])
    run.set_run_dir(tmp_path / "run")
    (tmp_path / "run").mkdir(exist_ok=True)
    return run


def launcher(run):
    return registry.build("launcher", run.specs["launcher"])


def test_torchrun_static_and_rendezvous_commands(tmp_path):
    run = run_of(tmp_path, "launcher=torchrun", "launcher.nnodes=2", "launcher.node_rank=1", "trainer.nproc=4",
                 "launcher.master_addr=node0", "launcher.master_port=29500")
    cmd = launcher(run).command(run)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc-per-node=4", "--node-rank=1", "--master-addr=node0", "--master-port=29500"} <= set(cmd)
    assert cmd[-3:] == ["-m", "tuneforge.runner.worker", str(tmp_path / "run")]
    assert run.world_size == 8

    run = run_of(tmp_path, "launcher=torchrun", "launcher.nnodes=2", "launcher.rdzv_endpoint=node0:29400")
    cmd = launcher(run).command(run)
    assert {"--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=tuneforge"} <= set(cmd)
    assert not any(c.startswith("--master-addr") for c in cmd)


def test_bad_launcher_knobs_are_listed_together():
    with pytest.raises(InputError) as e:
        Run.compose([*BASE, "launcher=torchrun", "launcher.nnodes=2", "launcher.rdzv_endpoint=node0"])
    assert "must be host:port" in str(e.value.render())
    with pytest.raises(InputError) as e:
        Run.compose([*BASE, "launcher=slurm", "launcher.extra=[exclusive]", "launcher.gpus_per_node=-1"])
    text = e.value.render()
    assert "'exclusive' must be an sbatch option" in text and "gpus_per_node=-1" in text


def test_deepspeed_multi_host_command_is_deepspeeds_pdsh_launch(tmp_path):
    """Two hosts: DeepSpeed's runner would call pdsh; the command DeepSpeed itself builds from our arguments
    starts deepspeed.launcher.launch with our worker module on every host, rendezvous on the first host."""
    from deepspeed.launcher.multinode_runner import PDSHRunner
    from deepspeed.launcher.runner import encode_world_info, parse_args

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\nnode-b slots=2\n")
    run = run_of(tmp_path, "launcher=deepspeed", f"launcher.hostfile={hostfile}", "launcher.nnodes=2",
                 "trainer.nproc=2", "launcher.master_port=29500")
    cmd = launcher(run).command(run)
    assert cmd[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"] and "--master_addr=node-a" in cmd
    args = parse_args(cmd[3:])
    hosts = {"node-a": [0, 1], "node-b": [0, 1]}
    pdsh, _, _ = PDSHRunner(args, encode_world_info(hosts)).get_cmd({}, hosts)
    line = " ".join(pdsh)
    assert line.startswith("pdsh -S -f 1024 -w node-a,node-b")
    assert "-m deepspeed.launcher.launch" in line and "--master_addr=node-a" in line and "--master_port=29500" in line
    assert " --module " in line and " --no_local_rank " in line
    assert line.endswith(f" tuneforge.runner.worker {tmp_path / 'run'}")


def test_deepspeed_hostfile_problems_name_the_fix(tmp_path, monkeypatch):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\nnode-b slots=4\n")
    run = run_of(tmp_path, "launcher=deepspeed", f"launcher.hostfile={hostfile}", "trainer.nproc=2")
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without pdsh
    problems = launcher(run).check(run)
    assert any("set launcher.nnodes=2" in p for p in problems)
    assert any("{'node-b': 4} differ from trainer.nproc=2" in p for p in problems)
    assert any("pdsh is not installed: install it (`apt-get install pdsh`)" in p for p in problems)
    hostfile.write_text("localhost slots=2\n")
    assert launcher(run).check(run) == []  # one host: launched here, no pdsh needed
    run = run_of(tmp_path, "launcher=deepspeed")
    with pytest.raises(InputError, match="needs launcher.hostfile=PATH"):
        launcher(run).launch(run)


def test_slurm_script_and_task_environment(tmp_path):
    from tuneforge.distributed.launchers.slurm import sbatch_script
    from tuneforge.distributed.launchers.srun_task import rank_env

    run = run_of(tmp_path, "launcher=slurm", "launcher.nnodes=2", "trainer.nproc=4", "launcher.gpus_per_node=4",
                 "launcher.time=04:00:00", "launcher.partition=gpu", "launcher.account=proj",
                 "launcher.extra=['--qos=high','#SBATCH --exclusive']", "launcher.signal_s=300")
    script = sbatch_script(run, run.specs["launcher"], "/work")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=04:00:00", "--partition=gpu",
                 "--account=proj", "--qos=high", "--exclusive", "--signal=USR1@300", "--requeue", "--chdir=/work",
                 f"--output={tmp_path / 'run'}/slurm-%j.out"):
        assert f"#SBATCH {line}\n" in script, line
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and "resume=--resume=auto" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    env = rank_env({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4",
                    "SLURM_CPUS_ON_NODE": "32", "SLURM_JOB_ID": "1234", "MASTER_ADDR": "gpu01"})
    assert env | {"MASTER_PORT": "21234"} == env and {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")} == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}
    assert env["MASTER_ADDR"] == "gpu01" and env["OMP_NUM_THREADS"] == "8"


def test_slurm_without_sbatch_writes_the_script_or_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    run = run_of(tmp_path, "launcher=slurm", "launcher.submit=false")
    assert launcher(run).launch(run) == 0
    assert (tmp_path / "run" / "slurm.sbatch").is_file() and "sbatch " in capsys.readouterr().out
    run = run_of(tmp_path, "launcher=slurm")
    with pytest.raises(InputError, match="sbatch, which is not on PATH"):
        launcher(run).launch(run)
