"""The two kinds of failure a user sees, and the exit codes they map to.

Exit codes (stable; docs/reliability.md):
    0  success
    1  failure during the run
    2  bad config or input (nothing was started, or a checkpoint was refused)
    3  preempted (SIGTERM / SIGUSR1): a checkpoint was committed; run again with trainer.resume=auto (requeue)
    4  diverged: trainer.max_bad_steps consecutive steps had a non-finite loss or gradient norm
    5  pruned: a trial of an optuna search was stopped by its pruner on an intermediate eval (a clean end)
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PREEMPTED, EXIT_DIVERGED, EXIT_PRUNED = 0, 1, 2, 3, 4, 5


class InputError(Exception):
    """Bad config or input, found before any model loads. Carries every problem found, each with its fix."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: list[str] | str, title: str = "invalid configuration or input"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.title = title
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.title}: {n} problem{'s' if n != 1 else ''}"
        return head + "".join(f"\n  - {p}" for p in self.problems)


class RunError(Exception):
    """A failure during the run (model could not load, a save failed, ...) with a message naming the fix."""

    exit_code = EXIT_FAILED


class Diverged(RunError):
    exit_code = EXIT_DIVERGED


class Preempted(Exception):
    """A stop signal was honoured: a checkpoint is committed and the run can be resumed."""

    exit_code = EXIT_PREEMPTED


class Pruned(Exception):
    """A search's pruner stopped this trial on an intermediate eval: the run ends cleanly, status "pruned"."""

    exit_code = EXIT_PRUNED


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest choice, or ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
