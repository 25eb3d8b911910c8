"""The device agent (``iotrust-agent``): the device side of onboarding, run on the device.

* :mod:`.onboard` — :func:`~.onboard.onboard`, the whole first contact, hello to confirm;
* :mod:`.transport` — the :class:`~.transport.Transport` seam, HTTP with retries, and the
  mapping of server replies to the error tree;
* :mod:`.keys` — the device's key stores (development key files, PKCS#11 tokens);
* :mod:`.state` — the agent's state folder (what it holds once onboarded);
* :mod:`.cli` — the ``iotrust-agent`` command line, the only place that exits.

The agent imports the core, the key-store adapters and a transport only: never the server's
services, API, registry or CLI (an import-linter contract keeps it so).
"""
