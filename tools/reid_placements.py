#!/usr/bin/env python
"""`visattn-reid-placements` as a script from a checkout: see :mod:`visattn.cli.reid_placements`."""

from visattn.cli.reid_placements import console

if __name__ == "__main__":
    console()
