"""Where results live: the Zarr store and its schema, the lease on it, watched checkpoints."""
