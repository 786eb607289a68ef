"""The centre link over MQTT."""
