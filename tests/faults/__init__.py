"""Fault suite: kill -9, broker restarts and data loss, poison, schema drift, duplicates,
concurrent writers.

The tests run the pipeline as a real ``python -m cdc.cli run`` process (one keeps an
in-process query running across a broker restart) and compare the tables with a clean
in-process run (see :mod:`tests.support.faults`).
"""
