"""Entry point of the warehouse publish (a CronJob, no Spark): ``cdc publish``.

Usage: python batch/publish.py --env prod [--table T ...]
Copies each gold table's changes since the Delta version the warehouse holds; a run that finds
every table at its published version changes nothing.
"""

from __future__ import annotations

import sys

from cdc.cli import main

if __name__ == "__main__":
    sys.exit(main(["publish", *sys.argv[1:]]))
