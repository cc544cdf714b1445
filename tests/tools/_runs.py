"""What the tool tests share: running a tool as a user does, and tiny model settings that train in seconds."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = json.dumps({"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "n_win": 2, "topks": [1, 2, 4, None],
                    "head_dim": 16})


def tool(name, *args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)


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

