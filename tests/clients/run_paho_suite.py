#!/usr/bin/env python3
"""Runs the broker conformance tests paho-mqtt ships in its source distribution
(tests/test_mqttv5.py, class Test: the Eclipse interoperability suite for MQTT 5 as paho's
client runs it) against the broker on BROKER_PORT, and prints one JSON line with the outcome
of each test: {"passed": [...], "failed": {name: message}}.

    run_paho_suite.py SUITE_TESTS_DIR

The suite's other classes restart the broker in-process to test the client's own recovery;
they are not about the broker and are not run.
"""

import io
import json
import os
import sys
import unittest


def main():
    tests_dir = sys.argv[1]
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "paho_suite_shim"))
    sys.path.insert(0, tests_dir)
    os.chdir(tests_dir)
    import test_mqttv5

    suite = unittest.defaultTestLoader.loadTestsFromTestCase(test_mqttv5.Test)
    every = [t.id().rsplit(".", 1)[-1] for t in suite]
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    failed = {}
    for test, trace in result.failures + result.errors:
        failed[test.id().rsplit(".", 1)[-1]] = trace.strip().splitlines()[-1]
    passed = [name for name in every if name not in failed]
    print("PAHO-SUITE " + json.dumps({"passed": passed, "failed": failed}), flush=True)


if __name__ == "__main__":
    main()
