#!/usr/bin/env python
"""`visattn-eval` as a script from a checkout: see :mod:`visattn.cli.eval`."""

from visattn.cli.eval import console

if __name__ == "__main__":
    console()
