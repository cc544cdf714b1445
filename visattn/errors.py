"""Errors caused by what the user asked for; the tools print them as one line and exit non-zero."""


class UserError(Exception):
    """Bad input (a name, a path, a file, a size): the message says what was wrong and what to do."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
