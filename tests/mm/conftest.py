"""The mm tests run in an environment set up as tools/train.py sets it up: mmcv's op stand-in installed."""

import visattn.mm

visattn.mm.setup()
