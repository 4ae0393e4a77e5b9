"""A sweep's jobs run by a Hydra launcher plugin: `tuneforge train -m hydra/launcher=submitit_slurm ...`.

This drives Hydra's own plugin objects, not a copy of them: `Plugins.instance().instantiate_launcher` builds the
launcher named by hydra/launcher (its schema and defaults composed by Hydra, its knobs set with
hydra.launcher.<knob>=...), and `Launcher.launch(job_overrides, initial_job_idx)` runs the jobs. For the submitit
launchers that is submitit's executor (a local process per job, or one Slurm array job with the sbatch script
submitit writes), pickling the launcher, `run_job` creating hydra.sweep.dir/hydra.sweep.subdir and calling the
task function. Calling submitit directly would duplicate all of this and lose the plugin's option names, its
defaults and any other installed launcher (joblib, ray, ...), which work through the same path.

Two things differ from a Hydra app, both so that a job runs exactly what the sweep validated:
- the config loader's `load_sweep_config` does not compose the job again (tuneforge composed and validated every
  job before any started): it returns the sweep's `hydra` node with the job's overrides;
- the task function runs the job's `Run`, built once on the launching machine, in the job's directory.
"""

from __future__ import annotations

from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from omegaconf import DictConfig

from tuneforge.config import hydra_node
from tuneforge.config.run import Run
from tuneforge.errors import EXIT_FAILED


class _JobLoader(ConfigLoaderImpl):
    """Hydra's config loader, except that a sweep job's config is the sweep's node with the job's overrides."""

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        return hydra_node.job_node(master_config, sweep_overrides, num=-1)  # the launcher sets job.num


class SweepJob:
    """The task function: run job `hydra.job.num`'s prepared Run in hydra.runtime.output_dir (its job dir)."""

    def __init__(self, runs: dict[int, Run]):
        self.runs = runs

    def __call__(self, cfg: DictConfig) -> int:
        from hydra.core.hydra_config import HydraConfig

        from tuneforge.runner.start import prepare_run_dir, start

        hc = HydraConfig.get()
        run, job_dir = self.runs[int(hc.job.num)], Path(hc.runtime.output_dir)
        prepare_run_dir(run, job_dir)
        return start(run, log=job_dir / "train.log")


def launch(master: DictConfig, loader, jobs: dict[int, tuple[list[str], Run]]) -> dict[int, int]:
    """Run `jobs` (index -> (overrides, Run)) with the launcher of `master`'s hydra node; index -> exit code.
    Consecutive indexes go in one launch (one Slurm array); a job the plugin reports failed is exit code 1."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext

    context = HydraContext(config_loader=_JobLoader(config_search_path=loader.get_search_path()),
                           callbacks=Callbacks(master))
    task = SweepJob({i: run for i, (_, run) in jobs.items()})
    launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=task, config=master)
    codes = {}
    for block in _consecutive(sorted(jobs)):
        try:
            returns = launcher.launch([hydra_node.redacted(jobs[i][0]) for i in block], initial_job_idx=block[0])
        except Exception as e:  # the launcher itself failed (a job died outside the task): each job's own state
            for i in block:
                job_dir = hydra_node.job_dir(master, jobs[i][0], i)
                codes[i] = 0 if _completed(job_dir) else EXIT_FAILED
                if codes[i]:
                    _note(job_dir, e)
            continue
        for i, ret in zip(block, returns):
            failed = ret.status != JobStatus.COMPLETED
            codes[i] = EXIT_FAILED if failed else int(ret.return_value)
            if failed:
                _note(hydra_node.job_dir(master, jobs[i][0], i), ret.return_value)
    return codes


def _completed(job_dir: Path) -> bool:
    import json

    try:
        return json.loads((job_dir / "summary.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def _consecutive(indexes: list[int]) -> list[list[int]]:
    blocks: list[list[int]] = []
    for i in indexes:
        if blocks and blocks[-1][-1] == i - 1:
            blocks[-1].append(i)
        else:
            blocks.append([i])
    return blocks


def _note(job_dir: Path, error) -> None:
    """A job that raised (before or around its ranks): its error at the end of its train.log."""
    job_dir.mkdir(parents=True, exist_ok=True)
    with open(job_dir / "train.log", "a") as f:
        f.write(f"\njob failed under the launcher: {type(error).__name__}: {error}\n")
