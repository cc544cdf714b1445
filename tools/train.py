#!/usr/bin/env python
"""`visattn-train` as a script from a checkout: see :mod:`visattn.cli.train`."""

from visattn.cli.train import console

if __name__ == "__main__":
    console()
