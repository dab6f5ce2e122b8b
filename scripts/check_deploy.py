#!/usr/bin/env python3
"""Checks deploy/k8s without a cluster; scripts/check-deploy.sh installs its tools and runs it.

1. Every overlay renders (`kubectl kustomize`).
2. Core objects pass `kubernetes-validate --strict` (the oldest Kubernetes the manifests
   claim, 1.30, and the newest the tool knows).
3. The custom resources (KEDA ScaledObject, prometheus-operator ServiceMonitor and
   PrometheusRule) pass check-jsonschema against their CRDs' schemas with every unknown
   field rejected. The schemas are made from the typed models of those CRDs on PyPI
   (cloudcoil-models-keda, cloudcoil-models-prometheus-operator), with
   additionalProperties false added to every object; a copy with an unknown field must
   fail, so the check is known to bite.
4. Rules of the deployment: no workload has both an HPA and a ScaledObject, or two of
   either; every HPA's per-pod metric is one the adapter rules serve; Deployments roll with
   maxUnavailable 0; every container has requests and limits, /readyz and /healthz probes
   on a port it declares; pods behind a Service pause in preStop for less than
   terminationGracePeriodSeconds minus the drain (http.shutdown_grace_ms, read from the
   effective config that `tally config` prints with the pod's environment); KEDA's Redis
   trigger names the Redis, stream and group the writers use.
5. `promtool check rules` and `promtool test rules` on the PrometheusRule's rules (the unit
   tests in components/monitoring/tests make every alert fire, and some must not).
6. Each rendered workload's pod (its env, envFrom ConfigMaps and Secrets, field refs, the
   service-link variables Kubernetes would inject unless the pod opts out, its args and
   volumes) runs the built binary, with redis-server and clickhouse-server on loopback for
   the scale-out roles, and answers 200 on its readiness and liveness paths. Only the
   addresses are changed: 0.0.0.0:<containerPort> becomes a loopback port, the Redis and
   ClickHouse Service names become the loopback servers, mount paths become folders.
7. A real Prometheus scrapes those processes, with the relabeling prometheus-operator
   generates for the ServiceMonitor, and loads the alert rules; after some traffic every
   PromQL expression of the adapter rules, the KEDA Prometheus trigger, the alerts
   (comparisons turned into `bool` ones, so an alert that is not firing still shows
   its series) and the Grafana dashboard returns a non-empty result, and every rule
   evaluates without error.

Every process it starts runs under `timeout` and is stopped when it exits; all traffic goes
to 127.0.0.1.
"""

import base64
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = ["single-node", "scale-out", "scale-out-prometheus-lag"]
# The overlays whose workloads are started (scale-out-prometheus-lag has scale-out's).
RUN_OVERLAYS = ["single-node", "scale-out"]
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("cloudcoil.models.keda.v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "cloudcoil.models.prometheus_operator.v1",
        "ServiceMonitor",
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "cloudcoil.models.prometheus_operator.v1",
        "PrometheusRule",
    ),
}
# What the Service names in the ConfigMap stand for on this machine: host:port → filled in
# with the loopback servers' ports.
SERVICE_HOSTS = {
    "redis.tally.svc.cluster.local:6379": "redis",
    "clickhouse.tally.svc.cluster.local:8123": "clickhouse",
}
# A writer's last batch after SIGTERM: an insert plus ClickHouse retries (~6 s of backoff).
WRITER_BATCH_ALLOWANCE_S = 30
# Grafana's variables as the live check fills them in.
GRAFANA_VARS = {"$__rate_interval": "1m", "$namespace": "tally"}
PROCESS_LIFETIME_S = 900

BIN = os.environ.get("TALLY_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "/var/cache/tally-target"), "release", "tally"
)

passed = 0
failed = 0


def ok(what):
    global passed
    passed += 1
    print(f"ok: {what}", flush=True)


def fail(what):
    global failed
    failed += 1
    print(f"FAILED: {what}", flush=True)


class CheckError(Exception):
    pass


def check(what, fn, *args):
    try:
        detail = fn(*args)
    except CheckError as e:
        fail(f"{what}: {e}")
        return None
    ok(what + (f" ({detail})" if isinstance(detail, str) and detail else ""))
    return True if detail is None else detail


def require(condition, message):
    if not condition:
        raise CheckError(message)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------- rendering


def render(overlay):
    r = run(["kubectl", "kustomize", os.path.join(K8S, "overlays", overlay)])
    if r.returncode != 0:
        raise CheckError(r.stderr.strip())
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    return docs


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


# ------------------------------------------------------------------- schema validation


def kubernetes_validate(tmp, overlay, docs):
    folder = os.path.join(tmp, "core", overlay)
    os.makedirs(folder, exist_ok=True)
    files = []
    for i, d in enumerate(docs):
        if (d["apiVersion"], d["kind"]) in CRD_MODELS:
            continue
        path = os.path.join(folder, f"{i:02d}-{d['kind']}-{d['metadata']['name']}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(d, f)
        files.append(path)
    out = []
    for version in KUBE_VERSIONS:
        r = run(["kubernetes-validate", "--strict", "--quiet", "-k", version, *files])
        if r.returncode != 0:
            raise CheckError(f"Kubernetes {version}:\n{r.stdout}{r.stderr}")
        out.append(version)
    return f"{len(files)} objects, Kubernetes {' and '.join(out)}"


def case_insensitive(pattern):
    """A Go `(?i)` pattern as one JSON Schema's regex dialect can read: each letter
    outside a character class or an escape becomes [xX]."""
    body = pattern.replace("(?i)", "", 1)
    out, i, in_class = [], 0, False
    while i < len(body):
        c = body[i]
        if c == "\\":
            out.append(body[i : i + 2])
            i += 2
            continue
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        out.append(f"[{c.lower()}{c.upper()}]" if c.isalpha() and not in_class else c)
        i += 1
    return "".join(out)


def strict_schema(schema):
    """Adds additionalProperties: false to every object schema that lists properties."""

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            if isinstance(node.get("pattern"), str) and "(?i)" in node["pattern"]:
                node["pattern"] = case_insensitive(node["pattern"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


def crd_schema(tmp, key):
    import importlib

    module, cls = CRD_MODELS[key]
    model = getattr(importlib.import_module(module), cls)
    schema = strict_schema(model.model_json_schema(by_alias=True, mode="validation"))
    path = os.path.join(tmp, f"schema-{cls}.json")
    with open(path, "w") as f:
        json.dump(schema, f)
    return path


def check_jsonschema(schema, obj, tmp, name):
    path = os.path.join(tmp, f"{name}.json")
    with open(path, "w") as f:
        json.dump(obj, f)
    return run(["check-jsonschema", "--schemafile", schema, path])


def validate_custom_resources(tmp, overlay, docs):
    checked = []
    for d in docs:
        key = (d["apiVersion"], d["kind"])
        if key not in CRD_MODELS:
            continue
        schema = crd_schema(tmp, key)
        name = f"{overlay}-{d['kind']}-{d['metadata']['name']}"
        r = check_jsonschema(schema, d, tmp, name)
        if r.returncode != 0:
            raise CheckError(f"{d['kind']} {d['metadata']['name']}:\n{r.stdout}{r.stderr}")
        # The same object with one unknown field must be refused.
        bad = copy.deepcopy(d)
        bad["spec"]["unknownField"] = 1
        r = check_jsonschema(schema, bad, tmp, name + "-bad")
        if r.returncode == 0:
            raise CheckError(f"{d['kind']}: a spec with an unknown field passed the schema")
        checked.append(d["kind"])
    if not checked:
        raise CheckError("no custom resources rendered")
    return ", ".join(checked) + "; an unknown field is refused"


# ------------------------------------------------------------------------ deployment rules


def pod_spec(w):
    return w["spec"]["template"]["spec"]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def effective_config(docs, w, service_links=None):
    """`tally config` run with the pod's environment: the settings the pod would get."""
    pod = Pod(docs, w, None, service_links=service_links)
    r = run([BIN, "config"], env=pod.env, cwd=tempfile.gettempdir())
    if r.returncode != 0:
        raise CheckError(f"{w['metadata']['name']}: tally config failed: {r.stderr.strip()}")
    return tomllib.loads(r.stdout)


def deployment_rules(overlay, docs, adapter_metrics):
    msgs = []
    targets = {}
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for a in find(docs, kind):
            ref = a["spec"]["scaleTargetRef"]
            key = (ref.get("kind", "Deployment"), ref["name"])
            if not find(docs, key[0], key[1]):
                raise CheckError(f"{kind} {a['metadata']['name']} targets missing {key}")
            if key in targets:
                raise CheckError(f"{key} is scaled by both {targets[key]} and {kind} {a['metadata']['name']}")
            targets[key] = f"{kind} {a['metadata']['name']}"
    for h in find(docs, "HorizontalPodAutoscaler"):
        kinds = {m["type"] for m in h["spec"]["metrics"]}
        resources = {m["resource"]["name"] for m in h["spec"]["metrics"] if m["type"] == "Resource"}
        if resources != {"cpu", "memory"} or "Pods" not in kinds:
            raise CheckError(f"HPA {h['metadata']['name']}: wants cpu, memory and a Pods metric")
        for m in h["spec"]["metrics"]:
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in adapter_metrics:
                raise CheckError(f"HPA {h['metadata']['name']}: no adapter rule serves {m['pods']['metric']['name']}")
    services = find(docs, "Service")
    for w in workloads(docs):
        name = w["metadata"]["name"]
        spec = pod_spec(w)
        labels = w["spec"]["template"]["metadata"]["labels"]
        if w["kind"] == "Deployment":
            ru = w["spec"].get("strategy", {}).get("rollingUpdate", {})
            if ru.get("maxUnavailable") != 0:
                raise CheckError(f"{name}: rollingUpdate.maxUnavailable is {ru.get('maxUnavailable')}, not 0")
        if spec.get("enableServiceLinks", True) is not False:
            raise CheckError(f"{name}: enableServiceLinks is not false")
        config = effective_config(docs, w)
        # And with the service links Kubernetes would inject if the pod did not opt out.
        effective_config(docs, w, service_links=True)
        drain = config["http"]["shutdown_grace_ms"] / 1000
        grace = spec.get("terminationGracePeriodSeconds", 30)
        args = " ".join(spec["containers"][0].get("args", []))
        role = re.search(r"--role (\w+)", args)
        role = role.group(1) if role else config["role"]
        for c in spec["containers"]:
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(part, {})):
                    raise CheckError(f"{name}/{c['name']}: {part} must set cpu and memory")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = c.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or get.get("port") not in ports:
                    raise CheckError(f"{name}/{c['name']}: {probe} must GET {path} on a declared port")
            behind = [
                s["metadata"]["name"]
                for s in services
                if s["spec"].get("clusterIP") != "None" and selects(s["spec"].get("selector"), labels)
            ]
            pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
            if behind:
                if pause is None:
                    raise CheckError(f"{name}: behind Service {behind} but no preStop pause")
                if not pause < grace - drain:
                    raise CheckError(f"{name}: preStop {pause}s is not < {grace}s - {drain}s drain")
            need = (pause or 0) + drain + (WRITER_BATCH_ALLOWANCE_S if role in ("writer", "all") else 0)
            if grace < need:
                raise CheckError(f"{name}: terminationGracePeriodSeconds {grace} < {need} (pause + drain + batch)")
        pause_text = f"preStop {pause}s" if pause is not None else "no preStop (no Service sends to it)"
        msgs.append(f"{name}: {pause_text}, drain {drain:g}s, grace {grace}s")
    for so in find(docs, "ScaledObject"):
        writer = find(docs, so["spec"]["scaleTargetRef"]["kind"], so["spec"]["scaleTargetRef"]["name"])[0]
        config = effective_config(docs, writer)
        for t in so["spec"]["triggers"]:
            if t["type"] == "redis-streams":
                m = t["metadata"]
                url = re.match(r"rediss?://([^/]+)", config["redis"]["url"]).group(1)
                want = {"address": url, "stream": config["redis"]["stream"], "consumerGroup": config["redis"]["group"]}
                got = {k: m.get(k) for k in want}
                if got != want:
                    raise CheckError(f"KEDA trigger {got} does not match the writers' config {want}")
                if "lagCount" not in m:
                    raise CheckError("KEDA redis-streams trigger does not scale on lagCount")
                msgs.append(f"KEDA redis-streams on {url} {want['stream']}/{want['consumerGroup']} lagCount {m['lagCount']}")
            elif t["type"] == "prometheus":
                msgs.append(f"KEDA prometheus: {t['metadata']['query']}")
            else:
                raise CheckError(f"unexpected trigger {t['type']}")
    return "; ".join(msgs)


# ------------------------------------------------------------------------------ promtool


def rules_file(tmp, docs):
    rules = find(docs, "PrometheusRule")
    if len(rules) != 1:
        raise CheckError(f"{len(rules)} PrometheusRules rendered")
    path = os.path.join(tmp, "rules.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, f, sort_keys=False)
    return path


def promtool_rules(tmp, docs):
    path = rules_file(tmp, docs)
    r = run(["promtool", "check", "rules", path])
    if r.returncode != 0:
        raise CheckError(r.stdout + r.stderr)
    test_src = os.path.join(K8S, "components", "monitoring", "tests", "alerts-test.yaml")
    test = os.path.join(tmp, "alerts-test.yaml")
    shutil.copy(test_src, test)
    r = run(["promtool", "test", "rules", test], cwd=tmp)
    if r.returncode != 0:
        raise CheckError(r.stdout + r.stderr)
    alerts = {x["alert"] for g in yaml.safe_load(open(path))["groups"] for x in g["rules"] if "alert" in x}
    tests = yaml.safe_load(open(test_src))
    fired = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    if alerts - fired:
        raise CheckError(f"no test makes these alerts fire: {sorted(alerts - fired)}")
    return f"{r.stdout.strip().splitlines()[-1]}; every one of {len(alerts)} alerts fires in a test"


# ------------------------------------------------------------------------- running pods


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link_name(service):
    return service.upper().replace("-", "_")


def service_link_vars(docs):
    """What the kubelet sets for every Service with a cluster IP in the pod's namespace."""
    env = {}
    for n, s in enumerate(find(docs, "Service")):
        if s["spec"].get("clusterIP") == "None":
            continue
        ip = f"10.96.0.{10 + n}"
        svc = link_name(s["metadata"]["name"])
        for i, p in enumerate(s["spec"]["ports"]):
            proto = p.get("protocol", "TCP")
            port = p["port"]
            if i == 0:
                env[f"{svc}_SERVICE_HOST"] = ip
                env[f"{svc}_SERVICE_PORT"] = str(port)
                env[f"{svc}_PORT"] = f"{proto.lower()}://{ip}:{port}"
            if p.get("name"):
                env[f"{svc}_SERVICE_PORT_{link_name(p['name'])}"] = str(port)
            base = f"{svc}_PORT_{port}_{proto}"
            env[base] = f"{proto.lower()}://{ip}:{port}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(port)
            env[f"{base}_ADDR"] = ip
    return env


KUBERNETES_VARS = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
}


def object_data(obj):
    data = dict(obj.get("data") or {})
    if obj["kind"] == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        data.update(obj.get("stringData") or {})
    return data


class Pod:
    """One replica of a rendered workload, as the kubelet would set it up, on loopback."""

    def __init__(self, docs, w, root, hosts=None, service_links=None):
        self.docs, self.w = docs, w
        spec = pod_spec(w)
        self.container = spec["containers"][0]
        kind = w["kind"]
        name = w["metadata"]["name"]
        self.name = f"{name}-0" if kind == "StatefulSet" else f"{name}-5d8f9c7b6-x2k4q"
        self.labels = w["spec"]["template"]["metadata"]["labels"]
        self.namespace = w["metadata"].get("namespace", "default")
        self.root = root
        self.ports = {}
        self.paths = {}
        if root:
            os.makedirs(root, exist_ok=True)
            for p in self.container.get("ports", []):
                self.ports[p["containerPort"]] = free_port()
            self.mount_volumes(spec)
        links = spec.get("enableServiceLinks", True) if service_links is None else service_links
        env = dict(KUBERNETES_VARS)
        if links:
            env.update(service_link_vars(docs))
        env["HOSTNAME"] = self.name
        for src in self.container.get("envFrom", []):
            for kind_ref, kind_obj in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if kind_ref in src:
                    ref = src[kind_ref]
                    objs = find(docs, kind_obj, ref["name"])
                    if not objs:
                        if ref.get("optional"):
                            continue
                        raise CheckError(f"{name}: envFrom {kind_obj} {ref['name']} is not rendered")
                    for k, v in object_data(objs[0]).items():
                        env[src.get("prefix", "") + k] = v
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                field = vf["fieldRef"]["fieldPath"]
                env[e["name"]] = {
                    "metadata.name": self.name,
                    "metadata.namespace": self.namespace,
                    "status.podIP": "127.0.0.1",
                    "spec.nodeName": "node-1",
                }[field]
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                kind_obj = "Secret" if "secretKeyRef" in vf else "ConfigMap"
                objs = find(docs, kind_obj, ref["name"])
                data = object_data(objs[0]) if objs else {}
                if ref["key"] in data:
                    env[e["name"]] = data[ref["key"]]
                elif not ref.get("optional"):
                    raise CheckError(f"{name}: {e['name']} needs {kind_obj} {ref['name']}/{ref['key']}, not rendered")
            else:
                raise CheckError(f"{name}: {e['name']}: unsupported valueFrom {list(vf)}")
        if hosts:
            env = {k: self.rewrite(v, hosts) for k, v in env.items()}
        self.env = {**env, "PATH": "/usr/bin:/bin"}
        cmd = self.container.get("command")
        if cmd and os.path.basename(cmd[0]) != "tally":
            raise CheckError(f"{name}: command {cmd} is not the tally binary")
        self.argv = [BIN] + [self.rewrite(a, hosts or {}) for a in (cmd or [])[1:] + self.container.get("args", [])]
        self.proc = None

    def mount_volumes(self, spec):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in self.w["spec"].get("volumeClaimTemplates", [])}
        for m in self.container.get("volumeMounts", []):
            folder = os.path.join(self.root, "volumes", m["name"])
            os.makedirs(folder, exist_ok=True)
            v = volumes.get(m["name"])
            if v and ("secret" in v or "configMap" in v):
                ref = v.get("secret", {}).get("secretName") or v.get("configMap", {}).get("name")
                kind = "Secret" if "secret" in v else "ConfigMap"
                objs = find(self.docs, kind, ref)
                if not objs:
                    raise CheckError(f"{self.w['metadata']['name']}: volume {kind} {ref} is not rendered")
                for k, val in object_data(objs[0]).items():
                    with open(os.path.join(folder, k), "w") as f:
                        f.write(val)
            elif not (v and ("emptyDir" in v or "persistentVolumeClaim" in v)) and m["name"] not in claims:
                raise CheckError(f"{self.w['metadata']['name']}: volume {m['name']} is not defined")
            self.paths[m["mountPath"]] = folder

    def rewrite(self, value, hosts):
        for mount, folder in self.paths.items():
            if value == mount or value.startswith(mount + "/"):
                value = folder + value[len(mount):]
        for addr, real in hosts.items():
            value = value.replace(addr, real)

        def listen(m):
            port = int(m.group(2))
            return f"127.0.0.1:{self.ports[port]}" if port in self.ports else m.group(0)

        return re.sub(r"(0\.0\.0\.0|\[::\]):(\d+)", listen, value)

    def port(self, name_or_number):
        for p in self.container.get("ports", []):
            if name_or_number in (p.get("name"), p["containerPort"]):
                return self.ports[p["containerPort"]]
        raise CheckError(f"{self.name}: no container port {name_or_number}")

    def start(self):
        self.log = open(os.path.join(self.root, "tally.log"), "w")
        self.proc = subprocess.Popen(
            ["timeout", str(PROCESS_LIFETIME_S)] + self.argv,
            env=self.env,
            cwd=self.root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def http(self, probe):
        get = self.container[probe]["httpGet"]
        return http_get(f"http://127.0.0.1:{self.port(get['port'])}{get['path']}")

    def wait_ready(self, timeout=90):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise CheckError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            last = self.http("readinessProbe")
            if last[0] == 200:
                live = self.http("livenessProbe")
                if live[0] != 200:
                    raise CheckError(f"{self.name}: liveness answered {live}")
                return last[1]
            time.sleep(0.2)
        raise CheckError(f"{self.name}: readiness {last} after {timeout}s:\n{self.tail()}")

    def tail(self):
        self.log.flush()
        with open(os.path.join(self.root, "tally.log")) as f:
            return "".join(f.readlines()[-15:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http_get(url, timeout=5):
    return http("GET", url, None, {}, timeout)


def http(method, url, body, headers, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        return None, str(e)


class Servers:
    """redis-server and clickhouse-server on loopback, as crates/testkit starts them."""

    def __init__(self, root):
        self.root = root
        self.procs = []
        self.redis_port = free_port()
        self.ch_http = free_port()

    def start(self):
        rdir = os.path.join(self.root, "redis")
        os.makedirs(rdir)
        self.spawn(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", rdir]
        )
        cdir = os.path.join(self.root, "clickhouse")
        os.makedirs(cdir)
        with open(os.path.join(cdir, "config.xml"), "w") as f:
            f.write(f"""<yandex>
  <logger><level>warning</level><log>{cdir}/server.log</log><errorlog>{cdir}/error.log</errorlog></logger>
  <http_port>{self.ch_http}</http_port><tcp_port>{free_port()}</tcp_port><listen_host>127.0.0.1</listen_host>
  <path>{cdir}/data/</path><tmp_path>{cdir}/tmp/</tmp_path>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
""")
        self.spawn(["clickhouse-server", f"--config-file={cdir}/config.xml"])
        deadline = time.time() + 60
        while time.time() < deadline:
            if http_get(f"http://127.0.0.1:{self.ch_http}/ping")[0] == 200 and self.redis("PING") == "PONG":
                return f"redis-server :{self.redis_port}, clickhouse-server :{self.ch_http}"
            time.sleep(0.2)
        raise CheckError("redis-server or clickhouse-server did not start")

    def spawn(self, argv):
        self.procs.append(
            subprocess.Popen(["timeout", str(PROCESS_LIFETIME_S)] + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    def redis(self, *args):
        r = run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port), *args])
        return r.stdout.strip()

    def hosts(self):
        real = {"redis": f"127.0.0.1:{self.redis_port}", "clickhouse": f"127.0.0.1:{self.ch_http}"}
        return {addr: real[what] for addr, what in SERVICE_HOSTS.items()}

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


# --------------------------------------------------------------------------- Prometheus


def sanitize(label):
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def to_snake(relabel):
    names = {
        "sourceLabels": "source_labels",
        "targetLabel": "target_label",
        "separator": "separator",
        "regex": "regex",
        "replacement": "replacement",
        "action": "action",
        "modulus": "modulus",
    }
    return {names[k]: v for k, v in relabel.items()}


def scrape_config(docs_by_overlay, pods):
    """The job prometheus-operator generates for the ServiceMonitor, with the targets
    Kubernetes' endpoints discovery would give it: the started pods behind each Service."""
    jobs = []
    for overlay, docs in docs_by_overlay.items():
        for sm in find(docs, "ServiceMonitor"):
            if set(sm["spec"]["selector"]) != {"matchLabels"}:
                raise CheckError("the emulation knows only selector.matchLabels")
            for i, ep in enumerate(sm["spec"]["endpoints"]):
                targets = []
                for svc in find(docs, "Service"):
                    if not selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"].get("labels", {})):
                        continue
                    port = [p for p in svc["spec"]["ports"] if p.get("name") == ep["port"]]
                    if not port:
                        continue
                    for pod in pods[overlay]:
                        if not selects(svc["spec"]["selector"], pod.labels):
                            continue
                        labels = {
                            "__meta_kubernetes_namespace": pod.namespace,
                            "__meta_kubernetes_service_name": svc["metadata"]["name"],
                            "__meta_kubernetes_pod_name": pod.name,
                            "__meta_kubernetes_pod_container_name": pod.container["name"],
                            "__meta_kubernetes_endpoint_port_name": ep["port"],
                        }
                        for k, v in pod.labels.items():
                            labels[f"__meta_kubernetes_pod_label_{sanitize(k)}"] = v
                        for k, v in svc["metadata"].get("labels", {}).items():
                            labels[f"__meta_kubernetes_service_label_{sanitize(k)}"] = v
                        targets.append({"targets": [f"127.0.0.1:{pod.port(port[0]['targetPort'])}"], "labels": labels})
                relabel = [
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                    {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
                    {"target_label": "endpoint", "replacement": ep["port"]},
                ] + [to_snake(r) for r in ep.get("relabelings", [])]
                jobs.append({
                    "job_name": f"serviceMonitor/{overlay}/{sm['metadata']['name']}/{i}",
                    "metrics_path": ep.get("path", "/metrics"),
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": targets,
                    "relabel_configs": relabel,
                })
    return jobs


class Prometheus:
    def __init__(self, root, jobs, rules):
        self.root = root
        self.port = free_port()
        os.makedirs(root, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": jobs,
        }
        self.config = os.path.join(root, "prometheus.yml")
        with open(self.config, "w") as f:
            yaml.safe_dump(config, f)
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.root, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            ["timeout", str(PROCESS_LIFETIME_S), "prometheus", f"--config.file={self.config}",
             f"--storage.tsdb.path={self.root}/data", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if http_get(f"http://127.0.0.1:{self.port}/-/ready")[0] == 200:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise CheckError("prometheus did not start:\n" + open(self.log.name).read()[-2000:])

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(url, timeout=10)
        if status != 200:
            raise CheckError(f"{path} {params}: {status} {body[:300]}")
        return json.loads(body)["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)



def with_bool(expr):
    """Turns every comparison outside label matchers into a `bool` one: the expression
    then returns its series whatever the threshold, so emptiness means a missing metric
    or label, not a quiet system."""
    out, i, braces, quote = [], 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\":
                out.append(expr[i + 1])
                i += 2
                continue
            if c == quote:
                quote = None
            i += 1
            continue
        if c in "\"'`":
            quote = c
        elif c == "{":
            braces += 1
        elif c == "}":
            braces -= 1
        elif braces == 0:
            m = re.match(r"==|!=|>=|<=|>|<", expr[i:])
            if m:
                out.append(m.group(0))
                i += len(m.group(0))
                if not re.match(r"\s*bool\b", expr[i:]):
                    out.append(" bool")
                continue
        out.append(c)
        i += 1
    return "".join(out)


def expressions(docs_by_overlay):
    """Every PromQL expression the deployment uses, with where it comes from."""
    exprs = []
    scale_out = docs_by_overlay["scale-out"]
    rules = find(scale_out, "PrometheusRule")[0]
    for g in rules["spec"]["groups"]:
        for r in g["rules"]:
            exprs.append((f"alert {r.get('alert') or r.get('record')}", with_bool(r["expr"]), None))
    for so in find(docs_by_overlay["scale-out-prometheus-lag"], "ScaledObject"):
        for t in so["spec"]["triggers"]:
            if t["type"] == "prometheus":
                exprs.append(("KEDA prometheus trigger", t["metadata"]["query"], None))
    dash = json.load(open(os.path.join(K8S, "components", "monitoring", "grafana-dashboard.json")))
    for p in dash["panels"]:
        for t in p.get("targets", []):
            e = t["expr"]
            for k, v in GRAFANA_VARS.items():
                e = e.replace(k, v)
            exprs.append((f"dashboard '{p['title']}'", e, None))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.match(r"label_values\((\w+), (\w+)\)", v["definition"])
            exprs.append((f"dashboard variable {v['name']}", f"count by ({m.group(2)}) ({m.group(1)})", m.group(2)))
    return exprs


def adapter_rules():
    return yaml.safe_load(open(os.path.join(K8S, "prometheus-adapter", "config.yaml")))["rules"]


def adapter_queries(prom, pods):
    out = []
    for rule in adapter_rules():
        series = prom.api("series", **{"match[]": rule["seriesQuery"]})
        if not series:
            raise CheckError(f"adapter seriesQuery {rule['seriesQuery']} finds no series")
        metric = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"].strip("'")).group(0)
        role = re.search(r'role="(\w+)"', rule["seriesQuery"]).group(1)
        names = sorted(p.name for p in pods if p.labels.get("app.kubernetes.io/component") == role)
        q = (
            rule["metricsQuery"]
            .replace("<<.Series>>", metric)
            .replace("<<.LabelMatchers>>", f'namespace="tally",pod=~"{"|".join(names)}"')
            .replace("<<.GroupBy>>", "pod")
        )
        out.append((f"adapter {rule['name']['as']}", q, names))
    return out


def traffic(pods, servers, tmp):
    """Requests that make every series the expressions use exist: events, a rejected
    event, a refused key, queries, a misrouted event (503), an undecodable stream entry."""
    keys_dir = os.path.join(tmp, "keys")
    r = run([BIN, "--data-dir", keys_dir, "project", "create", "check", "--format", "json"],
            env={"PATH": "/usr/bin:/bin"})
    if r.returncode != 0:
        raise CheckError(r.stderr)
    made = json.loads(r.stdout)
    projects = open(os.path.join(keys_dir, "projects.json")).read()
    # As an updated Secret (or the single node's own file) would deliver it.
    for pod in pods:
        for mount, folder in pod.paths.items():
            if "--data-dir" in pod.argv and pod.argv[pod.argv.index("--data-dir") + 1] == folder:
                with open(os.path.join(folder, "projects.json"), "w") as f:
                    f.write(projects)
    time.sleep(2.5)  # Tally reloads projects.json within 1 s
    write = {"x-api-key": made["write_key"]}
    read = {"x-api-key": made["read_key"]}
    counts = {}

    def send(pod, path, body, headers):
        status, text = http("POST", f"http://127.0.0.1:{pod.port('http')}{path}", body, headers)
        counts[(pod.name, path, status)] = counts.get((pod.name, path, status), 0) + 1
        return status, text

    # Five rounds 1.5 s apart: the adapter's rates over [2m] need two scrapes (1 s apart)
    # that a round falls between, after a series first appears; with three rounds a
    # stalled scrape on a busy machine once left the query route's rate empty.
    for _ in range(5):
        for pod in pods:
            role = pod.labels["app.kubernetes.io/component"]
            if role in ("ingest", "all"):
                for i in range(10):
                    s, t = send(pod, "/api/track", [{"event_name": "signed_up", "user_id": f"u{i}"}], write)
                    if s != 200:
                        raise CheckError(f"{pod.name} /api/track: {s} {t}")
                s, t = send(pod, "/api/track", [{"event_name": "ok", "user_id": "u"}, {"user_id": "no-name"}], write)
                send(pod, "/api/track", [{"event_name": "x", "user_id": "u"}], {"x-api-key": "not-a-key"})
            if role in ("query", "all"):
                for _ in range(5):
                    s, t = send(pod, "/api/v1/query", {"metrics": ["events"], "date_range": "7d"}, read)
                    if s != 200:
                        raise CheckError(f"{pod.name} /api/v1/query: {s} {t}")
            if role == "query":
                # Ingest sent to the wrong role: a 503 on an ingest route.
                send(pod, "/api/track", [{"event_name": "x", "user_id": "u"}], write)
        time.sleep(1.5)
    servers.redis("XADD", "tally:events", "*", "p", "not a batch", "n", "1")
    return f"{sum(counts.values())} requests"


def live_checks(prom, exprs, timeout=90):
    """Polls until every expression returns something, then reports each."""
    deadline = time.time() + timeout
    pending = list(exprs)
    results = {}
    while pending and time.time() < deadline:
        still = []
        for what, e, label in pending:
            res = prom.query(e)
            if res and (label is None or (isinstance(label, str) and all(label in r["metric"] for r in res))
                        or (isinstance(label, list) and sorted(r["metric"].get("pod") for r in res) == label)):
                results[what] = (e, res)
            else:
                still.append((what, e, label))
        pending = still
        if pending:
            time.sleep(2)
    return results, pending


# ------------------------------------------------------------------------------- main


# ---------------------------------------------------------------------------- the image


DOCKERFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "docker", "Dockerfile")


def dockerfile_instructions(text):
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def unknown_flags(args):
    """Flags of `tally <args>` that its --help does not list (the binary is the judge)."""
    sub = [a for a in args if not a.startswith("-")][:1]
    r = run([BIN, *sub, "--help"])
    require(r.returncode == 0, f"tally {' '.join(sub)} --help: {r.stderr.strip()}")
    known = set(re.findall(r"--[a-z][a-z-]*", r.stdout))
    return [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in known]


def dockerfile_rules(docs):
    ins = dockerfile_instructions(open(DOCKERFILE).read())
    stages, cur = [], None
    for word, rest in ins:
        if word == "FROM":
            parts = rest.split()
            cur = {"image": parts[0], "name": parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None, "ins": []}
            stages.append(cur)
        elif cur is not None:
            cur["ins"].append((word, rest))
    require(len(stages) >= 2, f"{len(stages)} stage(s): a builder and a runtime stage wanted")
    builder, final = stages[0], stages[-1]
    require(builder["image"].startswith("rust:"), f"builder stage from {builder['image']}")
    require(any(w == "RUN" and "cargo build --release --locked --workspace --all-targets" in r for w, r in builder["ins"]),
            "the builder does not run cargo build --release --locked --workspace --all-targets")
    require(final["image"] == "debian:bookworm-slim", f"runtime stage from {final['image']}")
    copies = [r for w, r in final["ins"] if w == "COPY" and r.startswith("--from=")]
    require(any(r.split()[0] == f"--from={builder['name']}" and "tally" in r for r in copies),
            f"the runtime stage copies no tally binary from the builder: {copies}")
    users = [r for w, r in final["ins"] if w == "USER"]
    require(users, "no USER: the image would run as root")
    uid = users[-1].split(":")[0]
    require(uid not in ("root", "0"), f"USER {users[-1]}")
    pod_uids = {str(pod_spec(w).get("securityContext", {}).get("runAsUser")) for d in docs.values() for w in workloads(d)}
    require(pod_uids == {uid}, f"USER {uid}, the pods' runAsUser {pod_uids}")
    health = [r for w, r in final["ins"] if w == "HEALTHCHECK"]
    require(health and "/healthz" in health[-1], f"HEALTHCHECK on /healthz wanted: {health}")
    if "curl" in health[-1]:
        require(any(w == "RUN" and re.search(r"apt-get install[^&]*\bcurl\b", r) for w, r in final["ins"]),
                "the HEALTHCHECK runs curl, which the runtime stage does not install")
    require(any(w == "EXPOSE" and "8080" in r.split() for w, r in final["ins"]), "no EXPOSE 8080")
    require(any(w == "VOLUME" for w, _ in final["ins"]), "no VOLUME for the data folder")
    entry = [json.loads(r) for w, r in final["ins"] if w == "ENTRYPOINT"]
    cmd = [json.loads(r) for w, r in final["ins"] if w == "CMD"]
    require(entry and entry[-1][0] == "tally", f"ENTRYPOINT {entry}: exec form, tally first")
    args = cmd[-1] if cmd else []
    require(args[:1] == ["serve"] and "--listen" in args, f"CMD {args}")
    require(args[args.index("--listen") + 1].startswith("0.0.0.0:8080"), f"CMD listens on {args}")
    bad = unknown_flags(args)
    require(not bad, f"tally does not accept {bad}")
    # The same check refuses a flag the binary does not have, so a pass above means something.
    require(unknown_flags(["serve", "--no-such-flag"]) == ["--no-such-flag"], "the flag check accepts anything")
    return f"{len(stages)} stages, USER {uid}, CMD {' '.join(entry[-1] + args)}"


def main():
    if not os.access(BIN, os.X_OK):
        print(f"no tally binary at {BIN}: build it first (cargo build --release -p tally)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="tally-check-deploy-")
    docs_by_overlay = {}
    for overlay in OVERLAYS:
        docs = check(f"{overlay}: kubectl kustomize renders", render, overlay)
        if docs is not None:
            docs_by_overlay[overlay] = docs
    if len(docs_by_overlay) != len(OVERLAYS):
        return finish(tmp)
    adapter_metrics = {r["name"]["as"] for r in adapter_rules()}
    for overlay, docs in docs_by_overlay.items():
        check(f"{overlay}: kubernetes-validate --strict", kubernetes_validate, tmp, overlay, docs)
        check(f"{overlay}: custom resources match their CRD schemas", validate_custom_resources, tmp, overlay, docs)
        check(f"{overlay}: deployment rules", deployment_rules, overlay, docs, adapter_metrics)
    check("promtool check rules + test rules", promtool_rules, tmp, docs_by_overlay["scale-out"])
    check("deploy/docker/Dockerfile: stages, non-root USER, HEALTHCHECK, flags tally accepts (not built: no Docker daemon here)",
          dockerfile_rules, docs_by_overlay)

    servers = Servers(os.path.join(tmp, "servers"))
    all_pods = {}
    prom = None
    try:
        if check("redis-server and clickhouse-server on loopback", servers.start) is None:
            return finish(tmp)
        for overlay in RUN_OVERLAYS:
            all_pods[overlay] = []
            for w in workloads(docs_by_overlay[overlay]):
                try:
                    pod = Pod(docs_by_overlay[overlay], w, os.path.join(tmp, "pods", overlay, w["metadata"]["name"]),
                              hosts=servers.hosts())
                except CheckError as e:
                    fail(f"{overlay}/{w['metadata']['name']}: {e}")
                    continue
                pod.start()
                all_pods[overlay].append(pod)
                check(f"{overlay}/{pod.name} starts from its pod spec and is ready", pod.wait_ready)
        if failed:
            return finish(tmp)
        info = servers.redis("XINFO", "GROUPS", "tally:events")
        check("Redis 7 reports the group's lag (what KEDA's lagCount reads)",
              lambda: require("tally-writers" in info and "lag" in info.split(), info))
        pods = [p for ps in all_pods.values() for p in ps]
        rules = rules_file(tmp, docs_by_overlay["scale-out"])
        prom = Prometheus(os.path.join(tmp, "prometheus"), scrape_config({o: docs_by_overlay[o] for o in RUN_OVERLAYS}, all_pods), rules)
        if check("prometheus scrapes the pods", prom.start) is None:
            return finish(tmp)
        check("traffic to every role", traffic, pods, servers, tmp)
        exprs = expressions(docs_by_overlay)
        try:
            exprs += adapter_queries(prom, [p for p in pods])
        except CheckError as e:
            fail(str(e))
        results, empty = live_checks(prom, exprs)
        for what, e, _ in exprs:
            if what in results:
                res = results[what][1]
                sample = ", ".join(
                    "{" + ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k in ("pod", "role", "stage", "reason", "kind", "route", "version", "namespace")) + "}=" + r["value"][1]
                    for r in res[:3]
                )
                ok(f"{what}: {len(res)} series, {sample}")
        for what, e, _ in empty:
            fail(f"{what} returned nothing: {e}")
        targets = prom.api("targets")["activeTargets"]
        down = [t["labels"] for t in targets if t["health"] != "up"]
        roles = sorted({t["labels"].get("role") for t in targets})
        check(f"every target is up ({len(targets)}: roles {roles})",
              lambda: require(not down and set(roles) >= {"all", "ingest", "writer", "query"}, f"down {down}, roles {roles}"))
        groups = prom.api("rules")["groups"]
        bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r.get("health") != "ok"]
        check(f"prometheus evaluates all {sum(len(g['rules']) for g in groups)} rules without error",
              lambda: require(not bad, str(bad)))
    finally:
        if prom:
            prom.stop()
        for ps in all_pods.values():
            for p in ps:
                p.stop()
        servers.stop()
    return finish(tmp)


def finish(tmp):
    if failed == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp} for a look", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
