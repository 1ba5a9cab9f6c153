"""Metrics of maps and attacks (METHODS.md), their catalogue, and the paired statistics."""
