"""The salaudit version, recorded in every store."""

__version__ = "0.1.0"
