"""Use cases: load via the adapters, decide with the core, persist, record one event per decision.

Services own transactions. They never print and never exit; the CLI and the API are their edges.
"""
