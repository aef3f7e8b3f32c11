"""Benchmarks: segworks measured against a peer doing the same work, in one run."""
