"""Atheris fuzz targets, one per decoder: run them as scripts (see README.md)."""
