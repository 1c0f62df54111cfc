#!/usr/bin/env python3
"""Checks the deployment files against the schemas and against the real binary, so a renamed
flag, config key, port or probe path breaks this check instead of a user's deployment.

kubernetes.yaml: Kubernetes schemas (kubernetes-validate, offline); every VIBEMQ_* variable is
a real key; the ConfigMap with the manifest's environment passes `vibemq check-config`; the
container's args are real flags; container ports agree with the configured addresses and the
services point at them; the probe paths answer 200 on a running binary; the headless service
is the seed name; the grace period covers preStop plus the shutdown deadline; HPA and PDB
target the workload. docker-compose.yml: the Compose specification (check-jsonschema), real
VIBEMQ_* keys, mounted config files that pass `vibemq check-config`.

Usage: scripts/check-deploy.py path/to/vibemq
"""
import base64
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/vibemq")
problems = []


def problem(msg):
    problems.append(msg)
    print("  FAIL", msg)


def ok(msg):
    print("  ok  ", msg)


def known_env_names():
    with open(os.path.join(ROOT, "config/default.toml"), "rb") as f:
        defaults = tomllib.load(f)
    return {f"VIBEMQ_{s.upper()}_{k.upper()}" for s, t in defaults.items() for k in t} | {"VIBEMQ_CONFIG"}


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def check_config(text, env, what):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VIBEMQ_")}
    full_env.update(env)
    r = subprocess.run([BINARY, "check-config", f.name], env=full_env, capture_output=True, text=True, timeout=30)
    os.unlink(f.name)
    if r.returncode == 0:
        ok(f"{what} passes vibemq check-config")
    else:
        problem(f"{what}: vibemq check-config says: {r.stderr.strip()}")
    return tomllib.loads(text)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def check_paths_answer(paths):
    http = free_port()
    proc = subprocess.Popen(
        [BINARY, "--bind", f"127.0.0.1:{free_port()}", "--http-bind", f"127.0.0.1:{http}", "--log-level", "error"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 15
        for path in paths:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=2) as r:
                        if r.status == 200:
                            ok(f"probe path {path} answers 200")
                        else:
                            problem(f"probe path {path} answers {r.status}")
                        break
                except urllib.error.HTTPError as e:
                    problem(f"probe path {path} answers {e.code}")
                    break
                except OSError:
                    if time.time() > deadline:
                        problem(f"the binary did not answer on its HTTP port for {path}")
                        break
                    time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def check_kubernetes():
    print("kubernetes.yaml")
    # As modules of this python: pip's console scripts may not be on PATH (pyenv shims).
    r = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "kubernetes.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    if r.returncode == 0:
        ok("valid against the Kubernetes schemas (kubernetes-validate --strict)")
    else:
        problem("kubernetes-validate: " + (r.stdout + r.stderr).strip())
    with open(os.path.join(ROOT, "kubernetes.yaml")) as f:
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(f) if d}
    deploy = docs[("StatefulSet", "vibemq")]
    pod = deploy["spec"]["template"]["spec"]
    c = pod["containers"][0]
    names = known_env_names()
    env = {}
    for e in c.get("env", []):
        if e["name"] not in names:
            problem(f"env {e['name']} is not a configuration key")
        elif "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = "vibemq-5d8f7-abcde"
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = base64.b64encode(b"k" * 32).decode()
    ok(f"{len(c.get('env', []))} env variables are configuration keys")
    cm = docs[("ConfigMap", "vibemq-config")]["data"]["vibemq.toml"]
    cfg = check_config(cm, env, "the ConfigMap with the manifest's environment")

    help_text = subprocess.run([BINARY, "--help"], capture_output=True, text=True).stdout
    for arg in c.get("args", []):
        if arg.startswith("--") and arg not in help_text:
            problem(f"container arg {arg} is not a vibemq flag")
    mount = next(v["mountPath"] for v in c["volumeMounts"] if v["name"] == "config")
    if c["args"][c["args"].index("--config") + 1] != f"{mount}/vibemq.toml":
        problem("--config does not point at the mounted ConfigMap")
    else:
        ok("args are real flags and --config points at the mounted ConfigMap")

    ports = {p["name"]: p for p in c["ports"]}
    expect = {
        "mqtt": (port_of(cfg["server"]["bind"]), "TCP"),
        "gossip": (port_of(cfg["cluster"]["gossip_addr"]), "UDP"),
        "peer": (port_of(cfg["cluster"]["peer_addr"]), "TCP"),
        "http": (port_of(cfg["http"]["bind"]), "TCP"),
    }
    for name, (port, proto) in expect.items():
        p = ports.get(name)
        if not p or p["containerPort"] != port or p.get("protocol", "TCP") != proto:
            problem(f"container port {name} should be {port}/{proto}, is {p}")
    ok("container ports agree with the configured addresses")
    for svc in ("vibemq", "vibemq-headless"):
        for sp in docs[("Service", svc)]["spec"]["ports"]:
            target = ports.get(sp["targetPort"])
            if not target or target.get("protocol", "TCP") != sp.get("protocol", "TCP"):
                problem(f"service {svc} port {sp['name']} targets {sp['targetPort']}, not a matching container port")
    ok("services target existing container ports")

    headless = docs[("Service", "vibemq-headless")]["spec"]
    if headless.get("clusterIP") != "None" or not headless.get("publishNotReadyAddresses"):
        problem("vibemq-headless must be headless (clusterIP None) and publish not-ready addresses")
    seed_hosts = {s.split("@")[-1].rsplit(":", 1)[0] for s in cfg["cluster"]["seeds"]}
    if seed_hosts != {"vibemq-headless"}:
        problem(f"seeds {cfg['cluster']['seeds']} should name the headless service")
    else:
        ok("seeds resolve through the headless service")

    check_paths_answer([c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]])
    for probe in ("readinessProbe", "livenessProbe"):
        if c[probe]["httpGet"]["port"] != "http":
            problem(f"{probe} is not on the http port")

    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    pause = int(pre_stop[1]) if pre_stop[0] == "sleep" else 0
    grace = pod["terminationGracePeriodSeconds"]
    shutdown = cfg["server"].get("shutdown_timeout", 10)
    if grace < pause + shutdown:
        problem(f"terminationGracePeriodSeconds {grace} < preStop {pause} + shutdown_timeout {shutdown}")
    else:
        ok(f"grace period {grace}s covers preStop {pause}s + shutdown_timeout {shutdown}s")

    hpa = docs[("HorizontalPodAutoscaler", "vibemq")]["spec"]
    if hpa["scaleTargetRef"]["name"] != "vibemq" or (hpa["minReplicas"], hpa["maxReplicas"]) != (1, 10):
        problem("HPA must scale the vibemq StatefulSet between 1 and 10 replicas")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    pdb = docs[("PodDisruptionBudget", "vibemq")]["spec"]["selector"]["matchLabels"]
    if any(labels.get(k) != v for k, v in pdb.items()):
        problem("the PodDisruptionBudget does not select the pods")
    ok("HPA and PodDisruptionBudget target the workload")
    if hpa["scaleTargetRef"]["kind"] != "StatefulSet":
        problem("the HPA must scale the StatefulSet")
    if deploy["spec"].get("serviceName") != "vibemq-headless":
        problem("the StatefulSet's serviceName must be the headless service")
    persistence = cfg.get("persistence", {})
    claims = {t["metadata"]["name"] for t in deploy["spec"].get("volumeClaimTemplates", [])}
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    if not persistence.get("enabled"):
        problem("persistence is not enabled in the ConfigMap")
    elif "data" not in claims or mounts.get("data") != persistence.get("dir"):
        problem(f"persistence.dir {persistence.get('dir')} is not the pod's own volume (data: {mounts.get('data')})")
    else:
        ok(f"persistence.dir {persistence['dir']} is each pod's own volume (volumeClaimTemplates)")


def check_compose():
    print("docker-compose.yml")
    r = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT, capture_output=True, text=True,
    )
    if r.returncode == 0:
        ok("valid against the Compose specification")
    else:
        problem("check-jsonschema: " + (r.stdout + r.stderr).strip())
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    names = known_env_names()
    for name, svc in compose["services"].items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        for k in env:
            if k not in names:
                problem(f"service {name}: env {k} is not a configuration key")
        named = set(compose.get("volumes") or {})
        store = env.get("VIBEMQ_PERSISTENCE_DIR")
        if store and not any(v.split(":")[-1] == store or v.split(":")[1:2] == [store] for v in svc.get("volumes", [])):
            problem(f"service {name}: its store {store} (VIBEMQ_PERSISTENCE_DIR) is not on a volume")
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src in named or ":" not in v:
                continue  # a named or anonymous volume (a node's store)
            path = os.path.join(ROOT, src)
            if not os.path.exists(path):
                problem(f"service {name} mounts {src}, which does not exist")
            elif src.endswith(".toml"):
                with open(path) as f:
                    check_config(f.read(), env, f"service {name}'s {src}")


check_kubernetes()
check_compose()
if problems:
    print(f"{len(problems)} problem(s) in the deployment files")
    sys.exit(1)
print("deployment files agree with the binary")
