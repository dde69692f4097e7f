"""Spark application entry point of the table maintenance jobs (a ScheduledSparkApplication).

Usage: spark-submit batch/maintain.py optimize --env prod
       spark-submit batch/maintain.py vacuum --env prod
Arguments are those of ``cdc maintain``: the delta-spark lake is maintained through the
Spark session spark-submit provides.
"""

from __future__ import annotations

import sys

from cdc.cli import main

if __name__ == "__main__":
    sys.exit(main(["maintain", *sys.argv[1:]]))
