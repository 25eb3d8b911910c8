"""Adapters: each wraps one external system behind a port and translates its errors.

``keys`` (encrypted files, development device key files, PKCS#11 tokens), ``sql`` (SQLAlchemy),
and the other adapters live in subpackages. This package itself imports none of them, so using one
adapter never loads another's driver.
"""
