"""Prefect tasks of salaudit: thin wrappers that load a shard, call the library and write a
region of the store. The orchestrated audit (flows) builds on these."""
