#!/usr/bin/env python
"""`visattn-export` as a script from a checkout: see :mod:`visattn.cli.export`."""

from visattn.cli.export import console

if __name__ == "__main__":
    console()
