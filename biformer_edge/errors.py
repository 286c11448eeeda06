"""Errors a user can fix. The CLIs print them as one line and exit with status 2."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and what to do."""

    exit_code = 2
