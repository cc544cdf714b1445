#!/usr/bin/env python
"""`visattn-predict` as a script from a checkout: see :mod:`visattn.cli.predict`."""

from visattn.cli.predict import console

if __name__ == "__main__":
    console()
