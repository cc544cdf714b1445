"""The command-line tools (`visattn-train`, `visattn-eval`, `visattn-benchmark`, `visattn-convert`,
`visattn-visualize`; `tools/*.py` call them) and what they share: one-line errors, JSON arguments, per-task
options."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable

from ..errors import UserError, first_line
from ..ops import environment_problem

# argparse's own complaints; any other "argument --x: ..." message comes from a visattn value type and starts with the
# value, so it reads "--x VALUE: why".
_ARGPARSE_WORDS = ("invalid ", "expected ", "ignored ", "not allowed", "one of the arguments")


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``error: --name VALUE: why``, exit code 2; every tool has
    ``--debug`` (full tracebacks)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if kwargs.get("description"):  # a module docstring shown as plain text: no reST roles or literals
            kwargs["description"] = re.sub(r"(?::\w+:)?`{1,2}([^`]+)`{1,2}", r"\1", kwargs["description"])
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    def error(self, message: str):
        match = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message, re.DOTALL)
        if match:
            flag, rest = match.groups()
            message = f"{flag}: {rest}" if rest.startswith(_ARGPARSE_WORDS) else f"{flag} {rest}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def is_config(argv: list[str]) -> bool:
    """True when the command line starts with an mmdet/mmseg config file (detection or segmentation)."""
    return bool(argv) and not argv[0].startswith("-") and argv[0].endswith(".py")


def mm_parser(doc: str):
    """The arguments every config-driven (mmengine) command shares."""
    from mmengine.config import DictAction

    class ConfigOptions(DictAction):
        """mmengine's ``KEY=VALUE`` parser, its complaints (a pair without ``=``, unbalanced brackets) one line."""

        def __call__(self, parser, namespace, values, option_string=None):
            for pair in values:
                key, sign, value = pair.partition("=")
                if not (key and sign):
                    raise argparse.ArgumentError(self, f"expected KEY=VALUE pairs, got {pair!r}")
                try:
                    self._parse_iterable(value)
                except (AssertionError, ValueError) as err:
                    raise argparse.ArgumentError(self, f"{pair}: {err}") from None
            super().__call__(parser, namespace, values, option_string)

    p = ToolParser(description=doc)
    p.add_argument("config", help="mmdet or mmseg config, e.g. configs/det/retinanet_biformer-s_fpn_1x_coco.py")
    p.add_argument("--work-dir", help="logs and checkpoints (default: work_dirs/<config name>)")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="'pytorch' under torchrun")
    p.add_argument("--cfg-options", nargs="+", action=ConfigOptions, default=None, metavar="KEY=VALUE",
                   help="override config entries, e.g. train_dataloader.batch_size=4")
    return p


def json_dict(text: str) -> dict:
    """argparse type for ``--model-kwargs '{"n_win": 8}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text}: expected a JSON object such as '{{\"n_win\": 8}}'")
    return value


class _TaskOptions:
    """What a task's ``add_*_arguments`` adds to. Its options default to None, so that a given one can be told
    apart, and stay out of --help unless it is the chosen task's; an option another task declared is shared."""

    def __init__(self, parser: argparse.ArgumentParser, task: str, shown: bool, owners: dict):
        self.target = parser.add_argument_group(f"{task} options") if shown else parser
        self.task, self.shown, self.owners = task, shown, owners

    def add_argument(self, *names: str, **kwargs) -> None:
        kwargs.setdefault("default", None)
        if not self.shown:
            kwargs["help"] = argparse.SUPPRESS
        flag = next(n for n in names if n.startswith("--"))
        dest = kwargs.get("dest") or flag[2:].replace("-", "_")
        if dest not in self.owners:
            self.target.add_argument(*names, **kwargs)
        self.owners.setdefault(dest, (flag, []))[1].append(self.task)


def parse_task_args(argv: list[str], doc: str, add_shared: Callable, tool: str):
    """Parse a tool's command line for its ``--task``: the shared options (``add_shared(parser, task_class)``)
    and the task's own (``add_{tool}_arguments``) in --help; another task's option is a one-line error.

    Returns (arguments, task class).
    """
    from .. import tasks as _registers_the_tasks  # noqa: F401
    from ..engine.task import DEFAULT_TASK, TASKS, get_task

    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--task")
    pre.add_argument("--resume")
    pre.add_argument("--checkpoint")
    try:
        known = pre.parse_known_args(argv)[0]
    except argparse.ArgumentError:
        known = argparse.Namespace(task=None, resume=None, checkpoint=None)  # the full parser reports the mistake
    chosen = known.task
    checkpoint = known.resume or known.checkpoint
    unreadable = None  # the checkpoint's own error, reported before an option it would have made valid
    if chosen is None and checkpoint:
        from ..engine.checkpoint import read_training_checkpoint

        try:  # continued or scored as the task that wrote it
            chosen = read_training_checkpoint(checkpoint, mmap=True).get("task")
        except UserError as err:
            unreadable = err  # else the tool's own reading reports the file
    chosen = chosen if chosen in TASKS else DEFAULT_TASK  # the full parser reports an unknown task
    p = ToolParser(description=doc,
                   epilog=f"tasks: {', '.join(TASKS)}; `--task NAME --help` lists a task's own options")
    p.add_argument("--task", choices=tuple(TASKS), default=chosen,
                   help=f"default: the task of the checkpoint given, else {DEFAULT_TASK}")
    task_class = get_task(chosen)
    add_shared(p, task_class)
    owners: dict[str, tuple[str, list[str]]] = {}  # dest -> (option, tasks that declare it)
    for name in (chosen, *(t for t in TASKS if t != chosen)):
        getattr(get_task(name), f"add_{tool}_arguments")(_TaskOptions(p, name, name == chosen, owners))
    args = p.parse_args(argv)
    for dest, (flag, tasks) in owners.items():
        if chosen not in tasks and getattr(args, dest) is not None:
            if unreadable is not None:
                raise unreadable
            raise UserError(f"{flag} is a {tasks[0]} option, not one of --task {chosen}")
    return args, task_class


def run(main: Callable[[], int | None], argv: list[str] | None = None) -> None:
    """Run a tool's main (``argv``: its command line, default ``sys.argv[1:]``); a :class:`UserError` becomes
    ``error: <message>`` on stderr and exit code 2 (with ``--debug``: the traceback); Ctrl-C ends with exit code 130
    and no traceback."""
    try:
        problem = environment_problem()
        if problem:
            raise UserError(problem)
        sys.exit(main() or 0)
    except UserError as err:
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"error: {first_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
