"""Errors a user can fix: the CLI prints their one-sentence message and exits with code 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad usage or bad input: a setting, a file or a folder that the user must fix.

    The message is a single sentence that names the file or key and says what is wrong. The CLI
    prints it without a traceback and exits 2; whoever raises it must not have changed anything
    on disk yet.
    """

    exit_code = 2
