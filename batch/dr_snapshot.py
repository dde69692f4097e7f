"""Entry point of the daily DR snapshot (a CronJob, no Spark): ``cdc dr snapshot``.

Usage: python batch/dr_snapshot.py --env prod
Copies what changed since the last snapshot to ``dr.location`` and writes its manifest,
signed with ``dr.manifest_key``.
"""

from __future__ import annotations

import sys

from cdc.cli import main

if __name__ == "__main__":
    sys.exit(main(["dr", "snapshot", *sys.argv[1:]]))
