"""The two ways a command fails: bad input (exit 2) and a run that failed (exit 1)."""

import re

MAX_MESSAGE_CHARS = 500


class SpecError(Exception):
    """A bad job file, override or input; the message is one line that names the file and key.

    Whatever the message echoes (a value, a path, a parser's complaint), it is kept to one line
    of at most MAX_MESSAGE_CHARS: the echoed input may hold newlines or be megabytes long.
    """

    def __init__(self, message: str):
        line = " ".join(str(message).splitlines())
        if len(line) > MAX_MESSAGE_CHARS:
            line = line[:MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(line)


class DataError(ValueError):
    """The data does not fit the job's `data` section; `field` names the key to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class RunFailed(Exception):
    """A run raised on its workers or controller; the message says where to look."""


def first_line(e: BaseException) -> str:
    """The line of an exception worth printing: from a Ray error carrying a remote traceback,
    the raised exception's own line."""
    text = str(e).strip().splitlines()
    # Worker errors carry the remote traceback; its last "SomeError: ..." line is the actual
    # exception (the message itself may span lines).
    raised = [line for line in text if re.match(r"[\w.]*(Error|Exception|Interrupt)\b", line)]
    if raised:
        return raised[-1][:300]
    tail = [line for line in text if line and not line.startswith(" ")]
    return (tail[-1] if tail else type(e).__name__)[:300]
