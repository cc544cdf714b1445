"""argparse value types shared by the tools and the tasks' options: a value that cannot work is refused where it is
parsed, as ``error: --name VALUE: why`` (see ``tools/_cli.py``), before anything is built or written."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _convert(text: str, kind: type):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
    return value


def _bounds_text(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"must be {'>' if low_open else '>='} {low}"
    if low is None:
        return f"must be {'<' if high_open else '<='} {high}"
    return f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _in_bounds(value, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def number(kind: type = float, low=None, high=None, *, low_open: bool = False, high_open: bool = False,
           why: str = "") -> Callable[[str], int | float]:
    """argparse type: one ``kind`` number within the bounds (``*_open``: the bound itself is excluded); ``why``
    follows the bounds in the error."""

    def parse(text: str):
        value = _convert(text, kind)
        if not _in_bounds(value, low, high, low_open, high_open):
            reason = _bounds_text(low, high, low_open, high_open)
            raise argparse.ArgumentTypeError(f"{text}: {reason}{f' ({why})' if why else ''}")
        return value

    parse.__name__ = kind.__name__
    return parse


def numbers(count: int | None, kind: type, example: str, low=None) -> Callable[[str], tuple]:
    """argparse type: comma-separated ``kind`` numbers (exactly ``count`` of them unless None), each >= ``low``."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            values = None
        if values is None or (count is not None and len(values) != count):
            raise argparse.ArgumentTypeError(f"{text}: expected {example}")
        if low is not None and any(v < low for v in values):
            raise argparse.ArgumentTypeError(f"{text}: every value must be >= {low} ({example})")
        return values

    parse.__name__ = "numbers"
    return parse


positive_int = number(int, 1)
non_negative_int = number(int, 0)
positive_float = number(float, 0, low_open=True)
non_negative_float = number(float, 0)
probability = number(float, 0, 1)
fraction = number(float, 0, 1, high_open=True)  # smoothing, drop rates: 1 would remove everything
open_fraction = number(float, 0, 1, low_open=True, high_open=True)  # thresholds, EMA decays, split fractions


def device(text: str) -> str:
    """argparse type: a device this machine has (cpu, cuda, cuda:N)."""
    from .distributed import device_problem

    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return text


def optimizer(text: str) -> str:
    """argparse type: the name of one of timm's optimizers."""
    import difflib

    from timm.optim import list_optimizers

    names = list_optimizers()
    if text.lower() not in names:
        close = difflib.get_close_matches(text.lower(), names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.optim.list_optimizers()"
        raise argparse.ArgumentTypeError(f"{text}: not a timm optimizer; {hint}")
    return text
