"""Spark application entry point for one streaming pipeline (what a SparkApplication runs).

Usage: spark-submit streaming/cdc_stream.py --env prod --pipeline crm_contacts
Arguments are those of ``cdc run``.
"""

from __future__ import annotations

import sys

from cdc.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
