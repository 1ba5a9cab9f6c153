"""Errors salaudit raises for bad input: never retried, always saying what to do."""


class SalauditError(ValueError):
    """Bad input or a refused operation; the message names the problem and the fix."""


class StoreConflict(SalauditError):
    """The store holds results that the requested run would contradict."""


class RegressionFound(Exception):
    """An audit compared with its baseline regressed beyond a threshold (exit code 1)."""


class AuditFailed(RuntimeError):
    """Some units of an audit failed; the others are written and a re-run recomputes only the
    rest (exit code 1)."""
