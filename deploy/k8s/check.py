#!/usr/bin/env python3
"""Offline check of the Kubernetes manifests (`make k8s-check`); no cluster is involved.

For every overlay: render it with `kubectl kustomize`, validate the output with
`kubernetes-validate --strict` against the oldest and the newest Kubernetes this repo
supports, lint the sources with yamllint, and hold the rendered objects against the
binaries: every FLOWPLANE_* variable and --flag a container is given must be in that
binary's --help, and every port must agree (listen settings, containerPorts, probes,
Services, NetworkPolicies, the URLs one service gives for another). `--self-test` breaks
copies of the manifests in a temporary directory and proves each break is caught.
It never contacts a cluster or a registry.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OVERLAYS = ("dev", "ha")
# The oldest Kubernetes the manifests support (gRPC probes, preStop `sleep`, StatefulSet PVC
# retention are all in its schema) and the newest kubernetes-validate 1.37.0 knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Settings that come with the etcd registry (issue 13), built on another branch; until it is
# merged the control plane's --help lacks them and the ha overlay fails on exactly these.
PENDING = {
    "FLOWPLANE_REGISTRY": "--registry",
    "FLOWPLANE_ETCD_PREFIX": "--etcd-prefix",
}
# Variables a flowplane container may get that are not its own flags.
PLAIN_ENV = {"POD_NAME", "POD_NAMESPACE", "POD_IP"}
# Which setting listens on which named containerPort.
LISTEN_PORTS = {
    "FLOWPLANE_LISTEN": "grpc",
    "FLOWPLANE_HEALTH_LISTEN": "health",
    "FLOWPLANE_METRICS_LISTEN": "metrics",
}
# Settings whose value names other services: comma-separated URL or HOST:PORT lists.
PEER_SETTINGS = ("FLOWPLANE_CONTROL_PLANE", "FLOWPLANE_REGISTRY")
# The health service name that stays SERVING through a drain (flowplane_grpc::server::LIVENESS_SERVICE).
LIVENESS_SERVICE = "grpc.health.v1.Health"
# Seconds a flowplane server takes past its grace period to close (the SDK host's AFTER_ABORT).
CLOSE_SLACK = 5
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


class Tools:
    def __init__(self, venv_bin: Path) -> None:
        self.kubectl = venv_bin / "kubectl"
        self.validate = venv_bin / "kubernetes-validate"
        self.yamllint = venv_bin / "yamllint"


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class Help:
    """Flags and environment variables a binary's --help lists."""

    cache: dict[Path, "Help"] = {}

    def __init__(self, binary: Path) -> None:
        # A clean environment: clap prints the current value of each variable it reads.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPLANE_")}
        out = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, env=env, timeout=30
        )
        if out.returncode != 0:
            raise SystemExit(f"k8s-check: {binary} --help failed: {out.stderr.strip()}")
        self.flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", out.stdout, re.M))
        self.env = set(re.findall(r"\[env: ([A-Z0-9_]+)", out.stdout))

    @classmethod
    def of(cls, binary: Path) -> "Help":
        if binary not in cls.cache:
            cls.cache[binary] = cls(binary)
        return cls.cache[binary]


def port_of(value: str) -> int | None:
    match = re.search(r":(\d+)$", value.strip())
    return int(match.group(1)) if match else None


def matches(selector: dict, labels: dict) -> bool:
    wanted = selector.get("matchLabels", selector) if selector else {}
    return all(labels.get(k) == v for k, v in wanted.items())


class Check:
    """Problems found in one rendered overlay; each names the object and the setting."""

    def __init__(self, overlay: str, objects: list[dict], bin_dir: Path) -> None:
        self.overlay = overlay
        self.objects = objects
        self.bin_dir = bin_dir
        self.problems: list[str] = []
        self.by_kind: dict[str, list[dict]] = {}
        for obj in objects:
            self.by_kind.setdefault(obj["kind"], []).append(obj)

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"overlay {self.overlay}: {where}: {message}")

    def kinds(self, *kinds: str) -> list[dict]:
        return [o for k in kinds for o in self.by_kind.get(k, [])]

    def named(self, kind: str, name: str) -> dict | None:
        return next((o for o in self.kinds(kind) if o["metadata"]["name"] == name), None)

    def pods(self) -> list[tuple[dict, dict]]:
        """(workload, pod template) of every workload."""
        return [(w, w["spec"]["template"]) for w in self.kinds(*WORKLOADS)]

    def selected_ports(self, selector: dict) -> list[dict]:
        """containerPorts of the pods `selector` selects."""
        return [
            port
            for _, pod in self.pods()
            if matches(selector, pod["metadata"].get("labels", {}))
            for c in pod["spec"]["containers"]
            for port in c.get("ports", [])
        ]

    def all(self) -> list[str]:
        for workload, pod in self.pods():
            self.pod(workload, pod)
        self.services()
        self.references()
        self.network_policies()
        return self.problems

    # ---- pods -------------------------------------------------------------------------
    def pod(self, workload: dict, pod: dict) -> None:
        where = f"{workload['kind']} {workload['metadata']['name']}"
        spec = pod["spec"]
        if spec.get("automountServiceAccountToken") is not False:
            self.problem(where, "automountServiceAccountToken must be false")
        if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
            self.problem(where, "securityContext.runAsNonRoot must be true")
        for container in spec["containers"]:
            self.container(f"{where} container {container['name']}", spec, container)

    def container(self, where: str, spec: dict, container: dict) -> None:
        security = container.get("securityContext", {})
        if security.get("readOnlyRootFilesystem") is not True:
            self.problem(where, "readOnlyRootFilesystem must be true")
        if security.get("allowPrivilegeEscalation") is not False:
            self.problem(where, "allowPrivilegeEscalation must be false")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            self.problem(where, "capabilities must drop ALL")
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            if "memory" not in resources.get(part, {}):
                self.problem(where, f"resources.{part}.memory is missing")
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        numbers = {p["containerPort"] for p in container.get("ports", [])}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind)
            if not probe:
                continue
            action = next(a for a in ("grpc", "httpGet", "tcpSocket", "exec") if a in probe)
            port = probe[action].get("port") if action != "exec" else None
            if isinstance(port, str):
                port = ports.get(port)
            if action != "exec" and port not in numbers:
                self.problem(where, f"{kind} calls port {probe[action].get('port')}, which is no containerPort")
        command = (container.get("command") or [""])[0]
        if command.startswith("flowplane"):
            self.flowplane(where, spec, container, ports)

    def env_of(self, where: str, container: dict) -> list[tuple[str, str | None, str]]:
        """(name, value or None when from a secret/field, source) in the kubelet's order."""
        found = []
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef", {}).get("name")
            config = self.named("ConfigMap", ref) if ref else None
            if ref and config is None:
                self.problem(where, f"envFrom names ConfigMap {ref}, which is not in the overlay")
                continue
            for key, value in (config or {}).get("data", {}).items():
                found.append((key, str(value), f"ConfigMap {ref}"))
        for item in container.get("env", []):
            found.append((item["name"], item.get("value"), "env"))
        return found

    def flowplane(self, where: str, spec: dict, container: dict, ports: dict) -> None:
        binary = self.bin_dir / container["command"][0]
        if not binary.exists():
            self.problem(where, f"{binary} does not exist: build the binaries first")
            return
        help = Help.of(binary)
        env = self.env_of(where, container)
        defined: set[str] = set()
        values: dict[str, str] = {}
        for name, value, source in env:
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value or ""):
                if ref not in defined:
                    self.problem(where, f"{name} ({source}) uses $({ref}), which is not defined before it")
            defined.add(name)
            if value is not None:
                values[name] = value
            if name.startswith("FLOWPLANE_"):
                if name not in help.env:
                    pending = (
                        f" (setting {PENDING[name]} of the etcd registry, issue 13: passes once that branch is merged)"
                        if name in PENDING
                        else ""
                    )
                    self.problem(
                        where,
                        f"{binary.name} --help lists no {name} (given by {source}){pending}",
                    )
            elif name not in PLAIN_ENV and not name.startswith("OTEL_"):
                self.problem(where, f"{name} ({source}) is neither a FLOWPLANE_* setting, OTEL_* nor one of {sorted(PLAIN_ENV)}")
        for arg in container.get("args", []):
            if arg.startswith("--") and arg.split("=", 1)[0] not in help.flags:
                self.problem(where, f"{binary.name} --help lists no flag {arg.split('=', 1)[0]}")
        # Every listen setting on its named port, every named port listened on.
        listened = set()
        for setting, port_name in LISTEN_PORTS.items():
            if setting not in values:
                continue
            listened.add(port_name)
            port = port_of(values[setting])
            if ports.get(port_name) != port:
                self.problem(where, f"{setting}={values[setting]} but containerPort {port_name} is {ports.get(port_name)}")
        for port_name in ports:
            if port_name not in listened:
                self.problem(where, f"containerPort {port_name} is declared but no setting listens on it")
        advertise = values.get("FLOWPLANE_ADVERTISE")
        if advertise and port_of(advertise) != ports.get("grpc"):
            self.problem(where, f"FLOWPLANE_ADVERTISE={advertise} is not on containerPort grpc ({ports.get('grpc')})")
        # kubelet's gRPC probes are plaintext: with TLS on they must call the health port.
        tls = "FLOWPLANE_TLS_CERT" in values
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind, {})
            if "grpc" not in probe:
                if probe:
                    self.problem(where, f"{kind} is not a gRPC probe")
                continue
            if tls and probe["grpc"]["port"] != ports.get("health"):
                self.problem(where, f"{kind} calls port {probe['grpc']['port']} with TLS on; kubelet speaks plaintext: use the health port ({ports.get('health')})")
            # Liveness must not fail a draining server; readiness must (the whole server).
            wanted = LIVENESS_SERVICE if kind == "livenessProbe" else ""
            if probe["grpc"].get("service", "") != wanted:
                self.problem(where, f"{kind} asks about service {probe['grpc'].get('service', '')!r}; it must ask about {wanted!r}")
        # The pod must outlive its drain: preStop, the grace period, the time to close.
        grace = 0
        if "FLOWPLANE_GRACE_PERIOD" in values:
            grace = int(re.sub(r"s$", "", values["FLOWPLANE_GRACE_PERIOD"]))
        if "FLOWPLANE_GRACE_PERIOD_SECS" in values:
            grace = int(values["FLOWPLANE_GRACE_PERIOD_SECS"])
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        termination = spec.get("terminationGracePeriodSeconds", 30)
        if termination <= pre_stop + grace + CLOSE_SLACK:
            self.problem(where, f"terminationGracePeriodSeconds {termination} is not longer than preStop {pre_stop}s + grace {grace}s + {CLOSE_SLACK}s")
        for setting in PEER_SETTINGS:
            for peer in filter(None, (values.get(setting) or "").split(",")):
                self.peer(where, setting, peer)

    def peer(self, where: str, setting: str, peer: str) -> None:
        """`peer` (URL or HOST:PORT) must name a Service of the overlay and one of its ports."""
        hostport = re.sub(r"^[a-z]+://", "", peer.strip())
        host, port = hostport.rsplit(":", 1) if ":" in hostport else (hostport, "")
        labels = host.split(".")
        service = None
        for candidate in labels[:2]:
            service = self.named("Service", candidate)
            if service:
                break
        if service is None:
            self.problem(where, f"{setting} names {host}, which is no Service of the overlay")
            return
        service_ports = {p["port"] for p in service["spec"].get("ports", [])}
        if not port.isdigit() or int(port) not in service_ports:
            self.problem(where, f"{setting} dials {host}:{port}, but Service {service['metadata']['name']} has ports {sorted(service_ports)}")

    # ---- services and references ----------------------------------------------------------
    def services(self) -> None:
        for service in self.kinds("Service"):
            where = f"Service {service['metadata']['name']}"
            selector = service["spec"].get("selector", {})
            pods = [p for _, p in self.pods() if matches(selector, p["metadata"].get("labels", {}))]
            if not pods:
                self.problem(where, "its selector matches no pod template")
                continue
            container_ports = self.selected_ports(selector)
            for port in service["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                ok = any(
                    (isinstance(target, str) and p.get("name") == target)
                    or (isinstance(target, int) and p["containerPort"] == target)
                    for p in container_ports
                )
                if not ok:
                    self.problem(where, f"port {port['port']} targets {target!r}, which no selected container declares")

    def references(self) -> None:
        for workload in self.kinds("StatefulSet"):
            name = workload["spec"].get("serviceName")
            service = self.named("Service", name)
            if service is None or service["spec"].get("clusterIP") != "None":
                self.problem(f"StatefulSet {workload['metadata']['name']}", f"serviceName {name} is not a headless Service of the overlay")
        for pdb in self.kinds("PodDisruptionBudget"):
            if not any(matches(pdb["spec"]["selector"], p["metadata"].get("labels", {})) for _, p in self.pods()):
                self.problem(f"PodDisruptionBudget {pdb['metadata']['name']}", "its selector matches no pod template")
        for hpa in self.kinds("HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            if self.named(ref["kind"], ref["name"]) is None:
                self.problem(f"HorizontalPodAutoscaler {hpa['metadata']['name']}", f"scales {ref['kind']} {ref['name']}, which is not in the overlay")

    def network_policies(self) -> None:
        """Each port a policy opens must be a containerPort of the pods it lets in or out to."""
        for policy in self.kinds("NetworkPolicy"):
            where = f"NetworkPolicy {policy['metadata']['name']}"
            spec = policy["spec"]
            for rule in spec.get("ingress", []):
                self.policy_ports(where, "ingress", rule, spec["podSelector"])
            for rule in spec.get("egress", []):
                peers = [p["podSelector"] for p in rule.get("to", []) if "podSelector" in p and "namespaceSelector" not in p]
                for selector in peers:
                    self.policy_ports(where, "egress", rule, selector)

    def policy_ports(self, where: str, direction: str, rule: dict, selector: dict) -> None:
        declared = {p["containerPort"] for p in self.selected_ports(selector)}
        if not declared:
            return  # a namespace-wide rule (default deny, DNS) or pods outside the overlay
        for port in rule.get("ports", []):
            if port.get("port") not in declared:
                self.problem(where, f"{direction} opens port {port.get('port')}, which no pod it selects declares")


def render(tools: Tools, root: Path, overlay: str) -> tuple[str, list[str]]:
    out = run([str(tools.kubectl), "kustomize", str(root / "overlays" / overlay)])
    if out.returncode != 0:
        return "", [f"overlay {overlay}: kubectl kustomize failed: {out.stderr.strip()}"]
    return out.stdout, []


def validate(tools: Tools, overlay: str, rendered: str, versions=KUBERNETES_VERSIONS) -> list[str]:
    problems = []
    with tempfile.NamedTemporaryFile("w", suffix=f"-{overlay}.yaml", delete=False) as f:
        f.write(rendered)
        path = f.name
    try:
        for version in versions:
            out = run([str(tools.validate), "--strict", "--quiet", "-k", version, path])
            if out.returncode != 0:
                text = (out.stdout + out.stderr).strip().replace(path, f"<overlay {overlay}>")
                problems.append(f"overlay {overlay}: kubernetes-validate --strict -k {version}: {text}")
    finally:
        os.unlink(path)
    return problems


def lint(tools: Tools, root: Path) -> list[str]:
    out = run([str(tools.yamllint), "--strict", "-c", str(root / ".yamllint"), str(root)])
    return [] if out.returncode == 0 else [f"yamllint: {out.stdout.strip()}"]


def copies(root: Path) -> list[str]:
    """base/pipelines must be exactly examples/pipelines (kustomize reads only below its root)."""
    problems = []
    examples = REPO / "examples" / "pipelines"
    for example in sorted(examples.glob("*.yaml")):
        copy = root / "base" / "pipelines" / example.name
        if not copy.exists() or copy.read_bytes() != example.read_bytes():
            problems.append(f"base/pipelines/{example.name} differs from examples/pipelines: cp examples/pipelines/*.yaml deploy/k8s/base/pipelines/")
    return problems


def check(tools: Tools, root: Path, bin_dir: Path, overlays=OVERLAYS, versions=KUBERNETES_VERSIONS, verbose=True) -> list[str]:
    problems = lint(tools, root) + copies(root)
    for overlay in overlays:
        rendered, failed = render(tools, root, overlay)
        problems += failed
        if failed:
            continue
        problems += validate(tools, overlay, rendered, versions)
        objects = [o for o in yaml.safe_load_all(rendered) if o]
        found = Check(overlay, objects, bin_dir).all()
        problems += found
        if verbose:
            print(
                f"k8s-check: overlay {overlay}: {len(objects)} objects rendered, "
                f"validated --strict against Kubernetes {' and '.join(KUBERNETES_VERSIONS)}, "
                f"{len(found)} problem(s) against the binaries"
            )
    return problems


# Deliberate breaks: (file under deploy/k8s, text, replacement, what the check must say).
BREAKS = [
    ("base/pipeline.yaml", "      enableServiceLinks: false\n", "      enableServiceLinks: false\n      bogusField: 1\n", "bogusField"),
    ("base/settings.yaml", "  FLOWPLANE_LEASE_TTL: 15s\n", "  FLOWPLANE_LEASE_TTL: 15s\n  FLOWPLANE_NO_SUCH_SETTING: x\n", "lists no FLOWPLANE_NO_SUCH_SETTING"),
    ("base/pipeline.yaml", "              containerPort: 8081", "              containerPort: 8082", "containerPort health is 8082"),
    ("base/control-plane.yaml", "      targetPort: grpc\n", "      targetPort: grpcs\n", "targets 'grpcs'"),
    ("base/processor.yaml", '          command: ["flowplane-processor"]\n', '          command: ["flowplane-processor"]\n          args: ["--no-such-flag"]\n', "lists no flag --no-such-flag"),
    ("base/settings.yaml", "  FLOWPLANE_CONTROL_PLANE: https://flowplane-control-plane:50051\n  FLOWPLANE_TLS_CERT: /etc/flowplane/certs/processor.pem", "  FLOWPLANE_CONTROL_PLANE: https://flowplane-control-plane:50052\n  FLOWPLANE_TLS_CERT: /etc/flowplane/certs/processor.pem", "dials flowplane-control-plane:50052"),
    ("base/processor.yaml", "      terminationGracePeriodSeconds: 30\n", "      terminationGracePeriodSeconds: 12\n", "terminationGracePeriodSeconds 12"),
    ("base/network-policy.yaml", "        - { protocol: TCP, port: 50061 }\n  egress:", "        - { protocol: TCP, port: 50062 }\n  egress:", "opens port 50062"),
    ("base/pipeline.yaml", "              service: grpc.health.v1.Health\n", "", "livenessProbe asks about service ''"),
    ("base/namespace.yaml", "  name: flowplane\n", "  name: flowplane   \n", "trailing-spaces"),
]


def self_test(tools: Tools, bin_dir: Path) -> int:
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for file, text, replacement, expected in BREAKS:
            root = Path(tmp) / "k8s"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(HERE, root)
            path = root / file
            source = path.read_text()
            if source.count(text) != 1:
                print(f"k8s-check self-test: {file} no longer holds the text to break ({text.strip()!r})")
                failures += 1
                continue
            path.write_text(source.replace(text, replacement))
            # One overlay and one version are enough to show that a break is caught.
            problems = check(tools, root, bin_dir, overlays=("dev",), versions=KUBERNETES_VERSIONS[:1], verbose=False)
            if any(expected in p for p in problems):
                print(f"k8s-check self-test: caught {expected!r} in a broken {file}")
            else:
                print(f"k8s-check self-test: a broken {file} was NOT caught (wanted {expected!r}); problems: {problems}")
                failures += 1
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=Path, default=REPO / "target" / "debug", help="where the flowplane binaries are")
    parser.add_argument("--venv-bin", type=Path, default=Path(sys.executable).parent, help="where kubectl, kubernetes-validate and yamllint are")
    parser.add_argument("--self-test", action="store_true", help="prove that broken copies of the manifests fail")
    args = parser.parse_args()
    tools = Tools(args.venv_bin)
    bin_dir = args.bin_dir.resolve()
    if args.self_test:
        failures = self_test(tools, bin_dir)
        print(f"k8s-check self-test: {len(BREAKS) - failures} of {len(BREAKS)} breaks caught")
        return 1 if failures else 0
    problems = check(tools, HERE, bin_dir)
    for problem in problems:
        print(f"k8s-check: {problem}", file=sys.stderr)
    if problems:
        print(f"k8s-check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("k8s-check: every overlay renders, validates and matches the binaries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
