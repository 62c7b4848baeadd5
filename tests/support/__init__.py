"""Helpers of the tests (not test modules, not fixtures): data builders, workflow runners, servers."""
