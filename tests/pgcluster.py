"""Throw-away PostgreSQL clusters for tests: see ``pgnotify.devcluster``."""

from pgnotify.devcluster import LocalCluster, find_pg_bin, free_port

__all__ = ["LocalCluster", "find_pg_bin", "free_port"]
