"""What paho-mqtt's tests/test_mqttv5.py asks of the test broker it would start in-process:
`run()` to start it and `listeners.TCPListeners.server` to find its port and stop it. Here the
broker is VibeMQ, already running on BROKER_PORT, so starting and stopping do nothing."""

import os


class _Socket:
    def getsockname(self):
        return ("127.0.0.1", int(os.environ["BROKER_PORT"]))


class _Server:
    socket = _Socket()

    def shutdown(self):
        pass

    def server_close(self):
        pass


class _TCPListeners:
    server = _Server()


class listeners:
    TCPListeners = _TCPListeners


def run(config=None):
    pass
