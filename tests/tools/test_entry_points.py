"""The installed commands: every ``[project.scripts]`` entry names a console function of ``visattn.cli`` with its
``tools/*.py`` shim, and an installed command runs."""

import importlib
import os
import re
import subprocess
import sys

import tomllib

from tests.tools._runs import ROOT


def _entry_points() -> dict[str, str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def test_every_command_is_a_console_function_with_a_tools_shim():
    for command, target in _entry_points().items():
        module_name, _, function = target.partition(":")
        assert module_name.startswith("visattn.cli.") and function == "console", (command, target)
        assert callable(getattr(importlib.import_module(module_name), function)), target
        shim = os.path.join(ROOT, "tools", module_name.rsplit(".", 1)[1] + ".py")
        assert f"from {module_name} import console" in open(shim).read(), shim


def test_an_installed_command_runs():
    command = os.path.join(os.path.dirname(sys.executable), "visattn-train")
    assert os.path.exists(command), f"{command} is missing: run make test (it installs the package)"
    result = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--task" in result.stdout and "--demo" in result.stdout


def test_every_commands_help_is_plain_text():
    from tests.tools._runs import tool

    for target in _entry_points().values():
        name = target.partition(":")[0].rsplit(".", 1)[1]
        result = tool(f"{name}.py", "--help")
        assert result.returncode == 0 and "usage:" in result.stdout, (name, result.stderr)
        assert not re.search(r":\w+:`|``", result.stdout), (name, re.findall(r".*(?::\w+:`|``).*", result.stdout))
