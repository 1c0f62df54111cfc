#!/usr/bin/env python3
"""Checks the deployment files against the schemas and against the real binary, so a renamed
flag, config key, port or probe path breaks this check instead of a user's deployment.

kubernetes.yaml: Kubernetes schemas (kubernetes-validate, offline); every VIBEMQ_* variable is
a real key; the ConfigMap with the manifest's environment passes `vibemq check-config`; the
container's args are real flags; container ports agree with the configured addresses and the
services point at them (MQTT and the admin port on separate services); the probe paths answer
200 on a running binary and every probe has a timeout; the headless service is the seed name;
the grace period covers server.shutdown_timeout and there is no preStop exec (the image has no
shell tools); the workload has no fixed replica count, the HPA a minimum of 3 and a slow
scale-down behaviour, the PDB keeps 2; the cluster secret is required and mounted as the
configured secret_file; advertise addresses come from the pod IP; the pod is hardened
(seccomp, no service account token, topology spread, memory request = limit); the image tag
is the crate's version; a NetworkPolicy keeps gossip and relay to VibeMQ pods.
monitoring/: the HPA on connections and the adapter rule against the Kubernetes schemas; the
PrometheusRule passes `promtool check rules`; every metric an alert or a dashboard query
names is one the binary exports (read from a running cluster node's /metrics).
docker-compose.yml: the Compose specification (check-jsonschema), real VIBEMQ_* keys, mounted
config files that pass `vibemq check-config`, every node with the same internal ports and
seeds of its own, and an open-file limit.

Usage: scripts/check-deploy.py path/to/vibemq
"""
import base64
import json
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
    # Variables only other values expand ($(POD_IP)) need not be configuration keys.
    expanded = {n for e in c.get("env", []) for n in re.findall(r"\$\((\w+)\)", e.get("value", ""))}
    env = {}
    for e in c.get("env", []):
        if e["name"] in expanded and "fieldRef" in e.get("valueFrom", {}):
            continue
        if e["name"] not in names:
            problem(f"env {e['name']} is not a configuration key")
        elif "value" in e:
            env[e["name"]] = re.sub(r"\$\(\w+\)", "10.1.2.3", e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = "vibemq-5d8f7-abcde"
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = base64.b64encode(b"k" * 32).decode()
    ok(f"{len(c.get('env', []))} env variables are configuration keys")
    cm = docs[("ConfigMap", "vibemq-config")]["data"]["vibemq.toml"]
    # The mounted Secret, as the pod sees it: a file with one secret in a directory here.
    secret_dir = tempfile.mkdtemp()
    with open(os.path.join(secret_dir, "secret"), "w") as f:
        f.write(base64.b64encode(b"k" * 32).decode() + "\n")
    secret_mount = next((m["mountPath"] for m in c["volumeMounts"] if m["name"] == "cluster-secret"), None)
    checked = cm.replace(secret_mount, secret_dir) if secret_mount else cm
    cfg = check_config(checked, env, "the ConfigMap with the manifest's environment")
    cfg = tomllib.loads(cm)

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

    probes = [p for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in c]
    check_paths_answer(sorted({c[p]["httpGet"]["path"] for p in probes}))
    for probe in probes:
        if c[probe]["httpGet"]["port"] != "http":
            problem(f"{probe} is not on the http port")
        if not c[probe].get("timeoutSeconds"):
            problem(f"{probe} has no timeoutSeconds (the default 1 s fails under load)")
    if {"readinessProbe", "livenessProbe"} - set(probes):
        problem("the container needs a readinessProbe and a livenessProbe")
    ok(f"probes {', '.join(probes)} on the http port, each with a timeout")

    if "preStop" in c.get("lifecycle", {}) and "exec" in c["lifecycle"]["preStop"]:
        problem("preStop exec: the image has no shell tools (sleep); use server.shutdown_delay")
    server = cfg.get("server", {})
    phases = sum(server.get(k, d) for k, d in (("shutdown_delay", 0), ("shutdown_clients_timeout", 5), ("shutdown_cluster_timeout", 5)))
    shutdown = server.get("shutdown_timeout", 10)
    grace = pod["terminationGracePeriodSeconds"]
    if server.get("shutdown_delay", 0) < 1:
        problem("server.shutdown_delay must give the endpoints time to drop the pod before it stops accepting")
    if grace <= shutdown or shutdown < phases:
        problem(f"terminationGracePeriodSeconds {grace} must exceed shutdown_timeout {shutdown}, which must cover its phases ({phases})")
    else:
        ok(f"grace period {grace}s > shutdown_timeout {shutdown}s >= its phases {phases}s")

    spec = deploy["spec"]
    if "replicas" in spec:
        problem("the StatefulSet sets replicas: every kubectl apply would reset the HPA's count")
    hpa = docs[("HorizontalPodAutoscaler", "vibemq")]["spec"]
    check_hpa(hpa, "kubernetes.yaml")
    labels = spec["template"]["metadata"]["labels"]
    pdb = docs[("PodDisruptionBudget", "vibemq")]["spec"]
    if any(labels.get(k) != v for k, v in pdb["selector"]["matchLabels"].items()):
        problem("the PodDisruptionBudget does not select the pods")
    if pdb.get("minAvailable") != 2:
        problem(f"the PodDisruptionBudget must keep minAvailable 2, has {pdb}")
    ok("no fixed replicas; HPA 3.. with a slow scale-down; PDB minAvailable 2 on the pods")
    if spec.get("serviceName") != "vibemq-headless":
        problem("the StatefulSet's serviceName must be the headless service")
    persistence = cfg.get("persistence", {})
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    if not persistence.get("enabled"):
        problem("persistence is not enabled in the ConfigMap")
    elif "data" not in claims or mounts.get("data") != persistence.get("dir"):
        problem(f"persistence.dir {persistence.get('dir')} is not the pod's own volume (data: {mounts.get('data')})")
    else:
        ok(f"persistence.dir {persistence['dir']} is each pod's own volume (volumeClaimTemplates)")

    # The cluster secret: required, mounted, and the file the config reads.
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref.get("optional"):
            problem(f"env {e['name']} takes an optional secret: without it the cluster runs unauthenticated")
    secret_file = cfg["cluster"].get("secret_file", "")
    secret_volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    mounted = [m for m in c["volumeMounts"] if m["name"] in secret_volumes]
    if not secret_file or not any(secret_file.startswith(m["mountPath"].rstrip("/") + "/") for m in mounted):
        problem(f"cluster.secret_file ({secret_file!r}) is not in a mounted Secret volume")
    elif any(v.get("optional") for v in secret_volumes.values()):
        problem("the cluster Secret volume is optional: pods would start unauthenticated without it")
    else:
        ok(f"the cluster secret is required and read from {secret_file}")

    envs = {e["name"]: e for e in c.get("env", [])}
    pod_ip = envs.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    for key, port in (("GOSSIP", expect["gossip"][0]), ("PEER", expect["peer"][0])):
        value = envs.get(f"VIBEMQ_CLUSTER_{key}_ADVERTISE_ADDR", {}).get("value")
        if pod_ip != "status.podIP" or value != f"$(POD_IP):{port}":
            problem(f"VIBEMQ_CLUSTER_{key}_ADVERTISE_ADDR must be $(POD_IP):{port} from status.podIP (got {value})")
    ok("advertise addresses come from the pod IP")

    if pod.get("automountServiceAccountToken") is not False:
        problem("automountServiceAccountToken must be false (the broker calls no Kubernetes API)")
    if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem("the pod needs seccompProfile RuntimeDefault")
    keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])}
    if not {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys:
        problem(f"topology spread must cover nodes and zones, covers {keys}")
    res = c.get("resources", {})
    if res.get("requests", {}).get("memory") != res.get("limits", {}).get("memory"):
        problem(f"memory request must equal its limit, has {res}")
    ok("pod hardened: seccomp RuntimeDefault, no token, spread over nodes and zones, memory request = limit")

    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        version = tomllib.load(f)["package"]["version"]
    if c["image"] != f"vibemq:{version}":
        problem(f"image {c['image']} should be the immutable vibemq:{version} (the crate's version)")
    else:
        ok(f"image {c['image']} is the crate's version")

    mqtt_svc = {p["targetPort"] for p in docs[("Service", "vibemq")]["spec"]["ports"]}
    admin_svc = {p["targetPort"] for p in docs[("Service", "vibemq-admin")]["spec"]["ports"]}
    if mqtt_svc != {"mqtt"} or admin_svc != {"http"}:
        problem(f"the client service must carry MQTT only ({mqtt_svc}) and vibemq-admin the http port ({admin_svc})")
    else:
        ok("MQTT and the admin port are on separate services")
    netpol = docs.get(("NetworkPolicy", "vibemq"), {}).get("spec", {})
    guarded = set()
    for rule in netpol.get("ingress", []):
        peers = rule.get("from")
        only_vibemq = peers and all(p.get("podSelector", {}).get("matchLabels") == labels for p in peers)
        for port in rule.get("ports", []):
            if port["port"] in (expect["gossip"][0], expect["peer"][0]):
                guarded.add(port["port"]) if only_vibemq else problem(f"port {port['port']} is open to more than VibeMQ pods")
    if guarded != {expect["gossip"][0], expect["peer"][0]}:
        problem(f"the NetworkPolicy must admit only VibeMQ pods to the gossip and peer ports (has {netpol})")
    else:
        ok("the NetworkPolicy keeps gossip and relay to VibeMQ pods")


def check_hpa(hpa, where):
    """The autoscaler's rules: the StatefulSet, at least 3, a slow one-pod scale-down."""
    if hpa["scaleTargetRef"] != {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "vibemq"}:
        problem(f"{where}: the HPA must scale the vibemq StatefulSet")
    if hpa.get("minReplicas", 1) < 3:
        problem(f"{where}: HPA minReplicas must be at least 3 (has {hpa.get('minReplicas', 1)})")
    down = hpa.get("behavior", {}).get("scaleDown", {})
    policies = down.get("policies", [])
    if down.get("stabilizationWindowSeconds", 0) < 300 or not policies or any(
        p["type"] != "Pods" or p["value"] != 1 or p["periodSeconds"] < 120 for p in policies
    ):
        problem(f"{where}: the HPA must scale down one pod at a time, minutes apart, after a long stabilization window (has {down})")


def exported_metrics():
    """The sample names a cluster node with persistence exports (counters as NAME_total)."""
    http, gossip, peer = free_port(), free_port(), free_port()
    data = tempfile.mkdtemp()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIBEMQ_")}
    env.update({
        "VIBEMQ_CLUSTER_ENABLED": "true",
        "VIBEMQ_CLUSTER_NODE_ID": "metrics-check",
        "VIBEMQ_CLUSTER_GOSSIP_ADDR": f"127.0.0.1:{gossip}",
        "VIBEMQ_CLUSTER_PEER_ADDR": f"127.0.0.1:{peer}",
        "VIBEMQ_PERSISTENCE_ENABLED": "true",
        "VIBEMQ_PERSISTENCE_DIR": data,
    })
    proc = subprocess.Popen(
        [BINARY, "--bind", f"127.0.0.1:{free_port()}", "--http-bind", f"127.0.0.1:{http}", "--log-level", "error"],
        stdout=subprocess.DEVNULL, env=env,
    )
    try:
        deadline = time.time() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=2) as r:
                    text = r.read().decode()
                break
            except OSError:
                if time.time() > deadline:
                    problem("the binary did not serve /metrics in cluster mode")
                    return set()
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            names.add(parts[2] + "_total" if parts[3] == "counter" else parts[2])
    return names


def named_metrics(expr):
    return set(re.findall(r"\bvibemq_[a-z0-9_]+\b", expr))


def check_monitoring():
    print("monitoring/")
    for name in ("hpa-connections.yaml", "prometheus-adapter.yaml"):
        r = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", f"monitoring/{name}"], cwd=ROOT, capture_output=True, text=True
        )
        if r.returncode == 0:
            ok(f"monitoring/{name} valid against the Kubernetes schemas")
        else:
            problem(f"monitoring/{name}: " + (r.stdout + r.stderr).strip())
    with open(os.path.join(ROOT, "monitoring/hpa-connections.yaml")) as f:
        hpa = yaml.safe_load(f)["spec"]
    check_hpa(hpa, "monitoring/hpa-connections.yaml")
    if not any(m.get("pods", {}).get("metric", {}).get("name") == "vibemq_connections" for m in hpa["metrics"]):
        problem("monitoring/hpa-connections.yaml does not scale on vibemq_connections")

    with open(os.path.join(ROOT, "monitoring/prometheus-operator.yaml")) as f:
        docs = {d["kind"]: d for d in yaml.safe_load_all(f) if d}
    monitor = docs["ServiceMonitor"]["spec"]
    with open(os.path.join(ROOT, "kubernetes.yaml")) as f:
        k8s = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(f) if d}
    admin = k8s[("Service", "vibemq-admin")]
    if any(admin["metadata"]["labels"].get(k) != v for k, v in monitor["selector"]["matchLabels"].items()):
        problem("the ServiceMonitor does not select the vibemq-admin service")
    if {e["port"] for e in monitor["endpoints"]} != {p["name"] for p in admin["spec"]["ports"]}:
        problem("the ServiceMonitor does not scrape the vibemq-admin port")
    else:
        ok("the ServiceMonitor scrapes the vibemq-admin service")

    groups = docs["PrometheusRule"]["spec"]["groups"]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": groups}, f)
    r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode == 0:
        ok("the PrometheusRule passes promtool check rules")
    else:
        problem("promtool check rules: " + (r.stdout + r.stderr).strip())

    exported = exported_metrics()
    rules = [rule for g in groups for rule in g["rules"]]
    for rule in rules:
        names = named_metrics(rule["expr"])
        if not names:
            problem(f"alert {rule['alert']} names no vibemq metric")
        for name in sorted(names - exported):
            problem(f"alert {rule['alert']} uses {name}, which the binary does not export")
    ok(f"{len(rules)} alerts name only metrics the binary exports")
    wanted = {"VibeMQPeerLinkDown", "VibeMQMembersBelowExpected", "VibeMQAcknowledgedMessagesDropped",
              "VibeMQRelayQueueNearBound", "VibeMQAuthFailures", "VibeMQConnectionsNearLimit", "VibeMQNodeNotReady"}
    missing = wanted - {r["alert"] for r in rules}
    if missing:
        problem(f"alerts missing: {sorted(missing)}")

    with open(os.path.join(ROOT, "monitoring/grafana-dashboard.json")) as f:
        dash = json.load(f)
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    queries += [v["query"] for v in dash.get("templating", {}).get("list", []) if v.get("type") == "query"]
    for q in queries:
        names = named_metrics(q)
        if not names:
            problem(f"dashboard query {q!r} names no vibemq metric")
        for name in sorted(names - exported):
            problem(f"dashboard query {q!r} uses {name}, which the binary does not export")
    ok(f"{len(queries)} dashboard queries name only metrics the binary exports")


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
    configs = {}
    # The one-shot service that makes the cluster secret: where it writes it.
    secret_path = None
    for name, svc in compose["services"].items():
        command = svc.get("command") or []
        if command[:1] == ["secret"]:
            secret_path = command[1]
            ok(f"service {name} makes the cluster secret at {secret_path}")
    secret_dir = tempfile.mkdtemp()
    with open(os.path.join(secret_dir, "cluster"), "w") as f:
        f.write(base64.b64encode(b"k" * 32).decode() + "\n")
    for name, svc in compose["services"].items():
        if (svc.get("command") or [])[:1] == ["secret"]:
            continue
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
                    text = f.read()
                # The secret as the node sees it once cluster-secret has run.
                checked = text.replace(os.path.dirname(secret_path), secret_dir) if secret_path else text
                configs[name] = check_config(checked, env, f"service {name}'s {src}")
                configs[name] = tomllib.loads(text)
        nofile = (svc.get("ulimits") or {}).get("nofile")
        if not nofile:
            problem(f"service {name}: no ulimits nofile (a container's default 1024 caps its connections)")
        aliases = ((svc.get("networks") or {}).get("cluster") or {}).get("aliases") or []
        if "vibemq" not in aliases:
            problem(f"service {name}: not on the cluster network as alias vibemq (the seeds' name)")
    # The secret: every node reads the file cluster-secret writes, from its volume, after it ran.
    for name, c in configs.items():
        svc = compose["services"][name]
        secret_file = c["cluster"].get("secret_file", "")
        if not c["cluster"].get("secret") and not secret_file:
            problem(f"service {name}: the cluster runs without a secret")
        elif secret_file and secret_file != secret_path:
            problem(f"service {name}: reads the cluster secret at {secret_file}, the service makes it at {secret_path}")
        depends = (svc.get("depends_on") or {}).get("cluster-secret") or {}
        if secret_file and depends.get("condition") != "service_completed_successfully":
            problem(f"service {name}: does not wait for cluster-secret to complete")
        # Anonymous clients (auth.allow_anonymous = true) only where the host's loopback alone
        # reaches the published MQTT ports.
        anonymous = str(c.get("auth", {}).get("allow_anonymous", "auto")).lower() == "true"
        for p in svc.get("ports", []):
            if anonymous and not str(p).startswith("127.0.0.1:"):
                problem(f"service {name}: publishes {p} beyond the host's loopback while admitting anonymous clients")
    if configs:
        ok("every node reads the cluster secret cluster-secret makes, after it ran; anonymous MQTT only on the host's loopback")
    # Every node alike: the same ports inside its container, and seeds of its own that name
    # the alias every node answers to (no node is the one the others need).
    inside = {
        name: (port_of(c["server"]["bind"]), port_of(c["cluster"]["gossip_addr"]), port_of(c["cluster"]["peer_addr"]))
        for name, c in configs.items()
    }
    if len(set(inside.values())) != 1:
        problem(f"the nodes listen on different ports inside their containers: {inside}")
    for name, c in configs.items():
        seeds = [sd.split("@")[-1].rsplit(":", 1) for sd in c["cluster"]["seeds"]]
        if not seeds or any(host != "vibemq" or int(port) != inside[name][1] for host, port in seeds):
            problem(f"service {name}: seeds {c['cluster']['seeds']} should be vibemq:{inside[name][1]}")
        published = [p.split(":")[-1] for p in compose["services"][name].get("ports", [])]
        if any(int(p) != inside[name][0] for p in published):
            problem(f"service {name}: publishes {published}, not its MQTT port {inside[name][0]}")
    ok(f"{len(configs)} nodes alike: ports {sorted(set(inside.values()))} inside, seeds through the alias, nofile set")


check_kubernetes()
check_monitoring()
check_compose()
if problems:
    print(f"{len(problems)} problem(s) in the deployment files")
    sys.exit(1)
print("deployment files agree with the binary")
