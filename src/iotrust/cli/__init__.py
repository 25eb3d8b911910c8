"""The ``iotrust`` command line: a thin edge over the services. The only place that exits."""
