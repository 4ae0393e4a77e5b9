"""The two kinds of failure a user sees, and the exit codes they map to.

Exit codes (stable): 0 success, 2 bad config or input (nothing was started), 1 failure during the run.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


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
    """A failure during the run (model could not load, training diverged, ...) with a message naming the fix."""

    exit_code = EXIT_FAILED


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest choice, or ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
