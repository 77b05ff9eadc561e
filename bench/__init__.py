"""Benchmark fixtures for archiverd: a fast upstream and a discarding S3 sink."""
