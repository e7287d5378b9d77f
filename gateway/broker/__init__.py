"""MQTT adapter: a reconnecting link to one broker (aiomqtt over paho-mqtt)."""
