"""Datasets: the records table, format readers/writers, shards, transforms and loading."""
