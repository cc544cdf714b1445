"""Shared command-line plumbing for the tools: repo on sys.path, one-line errors, JSON arguments."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from visattn.errors import UserError  # noqa: E402

TASKS = ("classification",)


def json_dict(text: str) -> dict:
    """argparse type for ``--model-kwargs '{"n_win": 8}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object such as '{\"n_win\": 8}'")
    return value


def run(main: Callable[[], int | None]) -> None:
    """Run a tool's main; a :class:`UserError` becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        sys.exit(main() or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
