"""The demo of ``cdc demo`` and ``make demo``: a realistic CRM and events data set.

Kept outside the :mod:`cdc` runtime package: :mod:`cdc_demo.data` generates the data set
(contracts, schemas, records, pipelines) and :mod:`cdc_demo.run` runs the demo end to end on
an embedded broker. It may import any of :mod:`cdc` except :mod:`cdc.cli`, which imports it.
"""

from __future__ import annotations

__all__: list[str] = []
