"""Errors caused by what the user asked for, and the one line every tool prints for an error."""

import re


class UserError(Exception):
    """Bad input (a name, a path, a file, a size): the message says what was wrong and what to do."""


def first_line(err: BaseException, with_type: bool = False) -> str:
    """The first line of an error's message (its type's name when the message is empty); for an error a DataLoader
    worker raised, the worker's own message, not torch's wrapper. ``with_type``: as ``Type: message``."""
    text = str(err).strip()
    if "Original Traceback" in text:  # torch re-raises a worker's exception with the worker's traceback inside
        text = re.sub(r"^[\w.]*(Error|Exception): ", "", text.splitlines()[-1].strip())
    if not text:
        return type(err).__name__
    line = text.splitlines()[0].strip()
    return f"{type(err).__name__}: {line}" if with_type else line
