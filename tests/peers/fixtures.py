"""Placeholder until the peers land."""
