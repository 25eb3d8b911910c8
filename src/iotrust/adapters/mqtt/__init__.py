"""MQTT broker adapters: the embedded Mosquitto (files, process, reload, kick) and its ACL text.

Services reach a broker only through :class:`iotrust.ports.BrokerControl`.
"""
