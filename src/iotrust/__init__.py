"""iotrust: keep an IoT fleet trustworthy from factory identity to retirement.

The package is layered (see ``docs/adr/0001-layout.md``): ``iotrust.core`` is pure domain logic,
``iotrust.adapters`` wrap one external system each, ``iotrust.services`` are the use cases, and
``iotrust.cli``, ``iotrust.api`` and ``iotrust.agent`` are the edges.
"""

__version__ = "0.1.0"
