"""MQTT: the gateway's own MQTT 5 link to a broker, and the school broker's config.

session.py (sans-I/O, over the mqtt5 codec) and keepalive.py decide; link.py
is the asyncio protocol and reconnect loop; limits.py and mosquitto_config.py
make the broker's configuration.
"""
