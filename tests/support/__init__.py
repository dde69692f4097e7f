"""Helpers shared by the integration and fault tests (test data, not fixtures)."""
