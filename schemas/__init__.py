"""Flowledger's contract: event bodies, the envelope, workflow specs and API bodies.

This package imports nothing else of ours; every other package depends on it.
"""
