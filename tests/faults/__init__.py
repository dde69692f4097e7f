"""Fault suite: kill -9, broker data loss, poison, schema drift, duplicates, concurrent writers.

Every test runs the pipeline as a real ``python -m cdc.cli run`` process and compares the
tables with a clean in-process run (see :mod:`tests.faults.harness`).
"""
