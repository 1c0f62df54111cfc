#!/usr/bin/env python3
"""paho-mqtt, the Eclipse Python client, driven by the Rust tests over any transport.

    paho_client.py sub  --topic T --count N   prints "ready" once subscribed, then one line per
                                               message: "<length> <first 40 bytes>"; exits 0
                                               after N messages
    paho_client.py pub  --topic T --size S --count N   publishes N messages of S bytes ("x"...)
                                                        with the QoS given, waiting for each ack
    paho_client.py hold --seconds S            connects, prints "connected <reason>", stays
                                               connected S seconds, disconnects

Common options: --host, --port, --transport tcp|websockets, --path (/mqtt), --ca FILE (TLS),
--v5, --qos, --bind ADDRESS (source address), --id CLIENT_ID. Every wait is bounded by
--timeout (10 s): on expiry it prints why to stderr and exits 1.
"""

import argparse
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["sub", "pub", "hold"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--transport", default="tcp", choices=["tcp", "websockets"])
    p.add_argument("--path", default="/mqtt")
    p.add_argument("--ca")
    p.add_argument("--v5", action="store_true")
    p.add_argument("--qos", type=int, default=1)
    p.add_argument("--topic", default="test")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--size", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--bind", default="")
    p.add_argument("--id", default="")
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()

    protocol = mqtt.MQTTv5 if a.v5 else mqtt.MQTTv311
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=a.id,
        transport=a.transport,
        protocol=protocol,
    )
    if a.transport == "websockets":
        client.ws_set_options(path=a.path)
    if a.ca:
        client.tls_set(ca_certs=a.ca)

    connected = threading.Event()
    subscribed = threading.Event()
    done = threading.Event()
    state = {"received": 0, "reason": None}

    def on_connect(c, userdata, flags, reason, properties):
        state["reason"] = str(reason)
        connected.set()

    def on_subscribe(c, userdata, mid, reasons, properties):
        subscribed.set()

    def on_message(c, userdata, msg):
        head = msg.payload[:40].decode("utf-8", "replace")
        print(f"{len(msg.payload)} {head}", flush=True)
        state["received"] += 1
        if state["received"] >= a.count:
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message

    def fail(why):
        print(why, file=sys.stderr, flush=True)
        sys.exit(1)

    try:
        client.connect(a.host, a.port, keepalive=30, bind_address=a.bind)
    except Exception as e:  # refused upgrades and handshakes surface here
        fail(f"connect failed: {e}")
    client.loop_start()
    if not connected.wait(a.timeout):
        fail("no CONNACK")
    if a.mode == "hold":
        print(f"connected {state['reason']}", flush=True)
        time.sleep(a.seconds)
    elif a.mode == "sub":
        client.subscribe(a.topic, qos=a.qos)
        if not subscribed.wait(a.timeout):
            fail("no SUBACK")
        print("ready", flush=True)
        if not done.wait(a.timeout):
            fail(f"received {state['received']} of {a.count}")
    else:
        payload = b"x" * a.size
        for _ in range(a.count):
            info = client.publish(a.topic, payload, qos=a.qos)
            info.wait_for_publish(a.timeout)
            if not info.is_published():
                fail("publish not acknowledged")
        print("published", flush=True)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
