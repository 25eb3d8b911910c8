"""The pure domain core: values in, values out, errors raised.

No clock, disk, socket or database: they come in as arguments or ports.
"""
