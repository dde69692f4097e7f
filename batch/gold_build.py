"""Entry point of the gold build (a CronJob, no Spark): ``cdc gold build``.

Usage: python batch/gold_build.py --env prod [--table T ...] [--full] [--as-of YYYY-MM-DD]
Refreshes the gold tables from silver's changes since the last build (one process, Polars and
delta-rs); a run over unchanged silver writes no Delta version.
"""

from __future__ import annotations

import sys

from cdc.cli import main

if __name__ == "__main__":
    sys.exit(main(["gold", "build", *sys.argv[1:]]))
