"""Use cases: load through the adapters, decide with the core, persist and record one event per decision.

Services own transactions. They never print and never exit; the CLI and the API are their edges.
"""
