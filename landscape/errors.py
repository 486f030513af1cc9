"""Errors meant for the user: one line that names the problem and the fix.

UsageError is bad input (exit status 2, nothing on disk touched); RunFailed is a failure while a
run is under way (exit status 1). Anything else is a bug and keeps its traceback.
"""


class LandscapeError(Exception):
    """Base class of errors reported to the user as a single line."""

    exit_code = 1


class UsageError(LandscapeError):
    """Bad input: an option, a file or a path the user gave. Exit status 2."""

    exit_code = 2


class RunFailed(LandscapeError):
    """A run could not go on (disk full, data vanished...). Exit status 1."""

    exit_code = 1


class OverBudget(UsageError):
    """The work asked for would take longer than the command's budget (`--budget-hours`): refused after measuring
    its first unit, with the estimate and the option that confirms it. Exit status 2."""
