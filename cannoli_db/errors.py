"""The one exception type users see: its message is a single line that says what
is wrong and what to do.  The CLI prints it and exits non-zero; anything else
escaping is a bug."""


class CannoliError(Exception):
    """A problem with the user's input or environment, explained in one line."""
