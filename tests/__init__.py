"""Cannoli DB test suite."""
