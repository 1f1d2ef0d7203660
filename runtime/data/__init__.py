"""Packaged data files (rank tables)."""
