"""Shared plumbing of every stage: errors and the script runner, atomic writes, config validation, cluster resources,
downloads, formatting.
"""
