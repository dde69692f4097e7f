"""Entry point of the SLA notifier (a CronJob, no Spark): ``cdc sla check``.

Usage: python batch/sla_check.py --env prod
Exit code 1 while a breach is open (the notification went out when it opened).
"""

from __future__ import annotations

import sys

from cdc.cli import main

if __name__ == "__main__":
    sys.exit(main(["sla", "check", *sys.argv[1:]]))
