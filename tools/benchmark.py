#!/usr/bin/env python
"""`visattn-benchmark` as a script from a checkout: see :mod:`visattn.cli.benchmark`."""

from visattn.cli.benchmark import console

if __name__ == "__main__":
    console()
