"""Stand-in for the `mqtt` package of paho.mqtt.testing, so paho-mqtt's own MQTT 5 suite runs
against an external broker (see run_paho_suite.py)."""
