"""The one exception type users see: its message is a single line that says what
is wrong and what to do.  The CLI prints it and exits non-zero; anything else
escaping is a bug."""


class CannoliError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a library's may run to many), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
