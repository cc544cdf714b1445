"""Errors caused by what the user asked for; the tools print them as one line and exit non-zero."""


class UserError(Exception):
    """Bad input (a name, a path, a file, a size): the message says what was wrong and what to do."""
