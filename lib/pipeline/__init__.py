"""The stages of an audit over a store: the spec, the run, explain, attack, evaluate, the audit's
plan, units and their scheduler, the estimate, and the in-memory notebook face."""
