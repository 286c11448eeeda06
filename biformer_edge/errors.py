"""Errors a user can fix. The CLIs print them as one line and exit with status 2."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and what to do."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message ("" when it has none), cut at a word boundary: for one-line errors."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def short_reason(exc: BaseException, limit: int = 120) -> str:
    """:func:`first_line`, named by the exception type when the message alone says nothing (empty, a bare number)."""
    text = first_line(exc, limit)
    if not text or text.isdigit() or len(text) < 3:
        text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text
