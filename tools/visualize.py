#!/usr/bin/env python
"""`visattn-visualize` as a script from a checkout: see :mod:`visattn.cli.visualize`."""

from visattn.cli.visualize import console

if __name__ == "__main__":
    console()
