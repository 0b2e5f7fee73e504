"""Errors of trajscope. They live in ``store`` (which imports nothing of ours) so every layer can use them."""


class UserError(Exception):
    """Something the user can fix (bad config, bad input, unknown run).

    The message is one line that says what is wrong and how to fix it; the CLI prints it without a
    traceback and the API turns it into a 4xx response.
    """


class RunNotFound(UserError, KeyError):
    """No run of that id under the store root."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "run not found"


class RunLocked(UserError):
    """Another writer holds the run."""


class PathOutsideRoot(UserError):
    """A key of a run resolves (through a symbolic link) outside the store root; it is never opened."""
