"""launcher=slurm: write an sbatch script into the run directory and submit it with `sbatch`.

    tuneforge train recipe=R launcher=slurm launcher.nnodes=2 trainer.nproc=4 launcher.gpus_per_node=4 \\
        launcher.partition=gpu launcher.time=04:00:00 'launcher.extra=[--qos=high]'

The script (<run_dir>/slurm.sbatch) asks for launcher.nnodes nodes with trainer.nproc tasks each; `srun` starts one
task per rank (srun_task.py maps SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS and the first host of the node list to
RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR). Pre-emption: `--signal=USR1@<signal_s>` has Slurm warn the ranks
before the time limit; they commit a checkpoint and exit 3, and the script then requeues the job
(`scontrol requeue`). A requeued job (SLURM_RESTART_COUNT > 0) resumes from the run directory's latest checkpoint,
as trainer.resume=auto. An outside `scontrol requeue` (SIGTERM to the ranks) takes the same path.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config.spec import knob, positive
from tuneforge.distributed.launch import LauncherSpec
from tuneforge.errors import InputError
from tuneforge.registry import register

TASK_MODULE = "tuneforge.distributed.launchers.srun_task"
SCRIPT = "slurm.sbatch"
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


@dataclass
class SlurmSpec(LauncherSpec):
    name: str = knob("slurm", "how ranks are started")
    partition: str = knob("", "sbatch --partition ('' : the cluster's default)")
    account: str = knob("", "sbatch --account ('' : your default)")
    time: str = knob("", "sbatch --time, e.g. 04:00:00 or 1-00:00:00 ('' : the partition's limit)")
    gpus_per_node: int = knob(0, "sbatch --gpus-per-node (0: none requested)")
    cpus_per_task: int = knob(0, "sbatch --cpus-per-task (0: the cluster's default)")
    job_name: str = knob("", "sbatch --job-name ('' : tuneforge-<recipe>)")
    signal_s: int = knob(120, "seconds before the time limit that Slurm sends SIGUSR1: the run checkpoints, "
                              "exits 3 and is requeued")
    extra: list = knob([], "more #SBATCH options, one per item, e.g. ['--qos=high', '--constraint=a100']")
    submit: bool = knob(True, "submit with sbatch (false: only write <run_dir>/slurm.sbatch)")
    wait: bool = knob(False, "wait for the job (requeues included) and return its exit code")

    def problems(self):
        out = [p for p in super().problems() if "fixed rendezvous port" not in p]  # derived from the job id
        out += positive(self, "gpus_per_node", "cpus_per_task", "signal_s", allow_zero=True)
        out += [f"extra item {e!r} must be an sbatch option starting with '-', e.g. '--qos=high'"
                for e in self.extra if not str(e).removeprefix("#SBATCH").strip().startswith("-")]
        return out


def sbatch_script(run, spec: SlurmSpec, cwd: str) -> str:
    """The batch script for `run` (pure: unit-tested)."""
    run_dir = run.run_dir
    opts = [f"--job-name={spec.job_name or 'tuneforge-' + run.recipe}", f"--nodes={run.nodes}",
            f"--ntasks-per-node={run.ranks_per_node}", f"--signal=USR1@{spec.signal_s}", "--requeue",
            "--open-mode=append", f"--output={run_dir}/slurm-%j.out", f"--chdir={cwd}"]
    for flag, value in (("gpus-per-node", spec.gpus_per_node), ("cpus-per-task", spec.cpus_per_task),
                        ("time", spec.time), ("partition", spec.partition), ("account", spec.account)):
        if value:
            opts.append(f"--{flag}={value}")
    opts += [str(e).removeprefix("#SBATCH").strip() for e in spec.extra]
    port = spec.master_port or "$((20000 + SLURM_JOB_ID % 20000))"
    task = shlex.join([sys.executable, "-m", TASK_MODULE, str(run_dir)])
    return "\n".join([
        "#!/bin/bash", *(f"#SBATCH {o}" for o in opts), "",
        f"# Written by tuneforge (launcher=slurm) for {run_dir}. Submit again with: sbatch {run_dir / SCRIPT}",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export MASTER_PORT={port}",
        'resume=""',
        'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then resume=--resume=auto; fi  # a requeued job continues',
        "trap 'echo \"tuneforge: job $SLURM_JOB_ID got SIGTERM; the ranks checkpoint\"' TERM  # wait for srun",
        f"srun --wait={int(spec.grace_s)} {task} $resume",
        "code=$?",
        "if [ $code -eq 3 ]; then",
        '    echo "tuneforge: pre-empted with a checkpoint committed; requeueing job $SLURM_JOB_ID"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        "exit $code", ""])


def job_state(job_id: str) -> tuple[str, int | None]:
    """(state, exit code or None) of a job slurmctld still knows; ('', None) for one it has forgotten."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f) if out.returncode == 0 else {}
    code = fields.get("ExitCode", "")
    return fields.get("JobState", ""), int(code.split(":")[0]) if code[:1].isdigit() else None


@register("launcher", "slurm", config=SlurmSpec)
class SlurmLauncher:
    def __init__(self, spec: SlurmSpec):
        self.spec = spec

    def launch(self, run, log: Path | None = None) -> int:
        script = Path(run.run_dir) / SCRIPT
        script.write_text(sbatch_script(run, self.spec, os.getcwd()))
        if not self.spec.submit:
            print(f"wrote {script} (launcher.submit=false): submit it with `sbatch {script}`", flush=True)
            return 0
        if not shutil.which("sbatch"):
            raise InputError([f"launcher=slurm submits with sbatch, which is not on PATH here: run on a Slurm login "
                              f"node, or set launcher.submit=false to only write {script}"])
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
        if out.returncode != 0:
            raise InputError([f"sbatch refused {script}: {out.stderr.strip()}"])
        job = out.stdout.strip().split(";")[0]
        (Path(run.run_dir) / "slurm_job.json").write_text(json.dumps({"job_id": job, "script": str(script)}))
        print(f"submitted Slurm job {job}; log: {run.run_dir}/slurm-{job}.out "
              f"(squeue -j {job}; scancel {job})", flush=True)
        return self.wait_for(job, run) if self.spec.wait else 0

    def wait_for(self, job: str, run) -> int:
        """Poll until the job has finished (a requeued job is pending again, not finished); its exit code."""
        while True:
            state, code = job_state(job)
            if not state or state in DONE:
                break
            time.sleep(2)
        if code is None:  # slurmctld forgot the job (MinJobAge): the run's own summary tells
            from tuneforge.distributed.launchers import CLEAN_STOPS, run_status

            code = {"completed": 0, **CLEAN_STOPS}.get(run_status(run.run_dir), 1)
        print(f"Slurm job {job}: {state or 'finished'}, exit code {code}", flush=True)
        return code
