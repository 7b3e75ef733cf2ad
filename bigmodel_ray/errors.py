"""The two ways a command fails: bad input (exit 2) and a run that failed (exit 1)."""


class SpecError(Exception):
    """A bad job file, override or input; the message is one line that names the file and key."""


class RunFailed(Exception):
    """A run raised on its workers or controller; the message says where to look."""
