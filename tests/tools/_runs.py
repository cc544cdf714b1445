"""What the tool tests share: running a tool as a user does, and tiny model settings that train in seconds."""

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import traceback
import warnings

import torch

from visattn.cli import run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = json.dumps({"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "n_win": 2, "topks": [1, 2, 4, None],
                    "head_dim": 16})


def script(name, *args, env=None):
    """``tools/<name>`` run as a script in a process of its own: the shim, the console and the exit code."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)


def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def tool(name, *args, env=None):
    """The command line of ``tools/<name>`` run in this process (no interpreter start-up per case) as the script runs
    it: its output, its warnings and its exit code, an uncaught exception as Python prints it (exit code 1). The
    environment and the global settings a run changes (deterministic algorithms) are restored afterwards."""
    module = importlib.import_module(f"visattn.cli.{name.removesuffix('.py')}")
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env, deterministic = dict(os.environ), torch.are_deterministic_algorithms_enabled()
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _print_warning
            try:
                run(lambda: module.main(argv), argv)
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        torch.use_deterministic_algorithms(deterministic)
    return subprocess.CompletedProcess([name, *argv], code, out.getvalue(), err.getvalue())


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for fragment in fragments:
        assert fragment in last, last


def torchrun_train(*args):
    """tools/train.py in two processes under torchrun; asserts it succeeded."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "tools", "train.py"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# HER-Seg cut down to run in seconds on a CPU.
SEG_SMALL = json.dumps({"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 2], "decoder_dim": 32,
                        "decoder_heads": 2, "decoder_depth": 1})


REID = ["--task", "reid", "--model", "resnet18", "--input-size", "64,32", "--batch-size", "8", "--instances", "2",
        "--workers", "0"]

