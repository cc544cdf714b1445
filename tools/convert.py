#!/usr/bin/env python
"""`visattn-convert` as a script from a checkout: see :mod:`visattn.cli.convert`."""

from visattn.cli.convert import console

if __name__ == "__main__":
    console()
