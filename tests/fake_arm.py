"""A local fake of Azure Resource Manager, for tests only: ACI container groups, AKS managed
clusters (PUT/GET/DELETE as long-running operations, listClusterUserCredential) and ACR
registries (GET, listCredentials).

It serves HTTPS on 127.0.0.1 with a test CA made at test time (azure-core sends
bearer tokens over HTTPS only), answers each resource provider at its pinned
api-version only, and follows the REST APIs:

- request bodies are checked against Azure's own OpenAPI definitions of the
  api-version sent (tests/azure-specs, with jsonschema; see tests/arm_spec.py):
  unknown members, missing required ones, wrong types and enums are a 400;
- PUT and DELETE are long-running operations: `Azure-AsyncOperation` and
  `Retry-After` headers, `provisioningState` going Pending, Creating, then
  Succeeded or Failed over time;
- GET never returns a `secureValue`;
- bearer tokens are checked: missing, unknown or expired tokens get ARM's 401s;
- faults can be injected (429 with `Retry-After`, 409, any status) per request.

The containers of a group run in Docker, published on 127.0.0.1 only: an
"infra" container holds the group's network namespace and published ports, and
every container of the group joins it, so they share localhost as in ACI.
The fake reports Succeeded once the containers run and their readiness probes
answer (a stricter wait than ACI's, so tests can score at once), and Failed when
a container exits while the group starts, with the container's events and log.
This is a test double: nothing here reaches or stands for a deployment in Azure.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import docker
import requests

API_VERSION = "2025-09-01"
AKS_API_VERSION = "2025-10-01"
ACR_API_VERSION = "2025-11-01"
API_VERSIONS = {
    "Microsoft.ContainerInstance": API_VERSION,
    "Microsoft.ContainerService": AKS_API_VERSION,
    "Microsoft.ContainerRegistry": ACR_API_VERSION,  # no body is sent to it: nothing to check against a spec
}
NAMESPACE = re.compile(r"/providers/(Microsoft\.[A-Za-z]+)/")
CLUSTER_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.ContainerService/"
    r"managedClusters/(?P<name>[^/]+)(?P<rest>/.*)?$"
)
REGISTRY_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.ContainerRegistry/"
    r"registries/(?P<name>[^/]+)(?P<rest>/.*)?$"
)
GROUP_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.ContainerInstance/"
    r"containerGroups/(?P<name>[^/]+)(?P<rest>/.*)?$"
)
OP_PATH = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.[A-Za-z]+/locations/[^/]+/operations/(?P<op>[^/]+)$")
LABEL = "mldeploy.fakearm"


class BodyInvalid(ValueError):
    pass


def validate_group_body(body: Any, api_version: str = API_VERSION) -> None:
    """The PUT body against the official ContainerGroup definition (tests/azure-specs), then ACI's own rules.

    The schema part is Azure's REST specification of the api-version sent; the
    limits and the DNS label are what ACI answers beyond it (documented limits).
    """
    from arm_spec import SpecViolation, check

    if not isinstance(body, dict):
        raise BodyInvalid("body: must be a JSON object")
    try:
        check("Microsoft.ContainerInstance", api_version, "ContainerGroup", body)
    except SpecViolation as exc:
        raise BodyInvalid(str(exc)) from None
    if not body.get("location"):
        raise BodyInvalid("body.location: required property missing")
    props = body["properties"]
    for i, c in enumerate(props["containers"]):
        if "image" not in c["properties"] or "resources" not in c["properties"]:
            # Optional in the 2025-09-01 schema (a container group profile can supply them); this fake
            # runs containers only from what the body gives, so it refuses the body instead of guessing.
            missing = "image" if "image" not in c["properties"] else "resources"
            raise BodyInvalid(f"body.properties.containers[{i}].properties.{missing}: needed by this fake (no container group profiles)")
    cpu = sum(c["properties"]["resources"]["requests"]["cpu"] for c in props["containers"])
    mem = sum(c["properties"]["resources"]["requests"]["memoryInGB"] for c in props["containers"])
    if props.get("osType") == "Linux" and (cpu > 4 or mem > 16):
        raise BodyInvalid(f"body.properties.containers: the group requests {cpu} CPU and {mem} GB; a Linux group allows 4 and 16")
    label = (props.get("ipAddress") or {}).get("dnsNameLabel")
    if label is not None and not re.match(r"^[a-z][a-z0-9-]{1,61}[a-z0-9]$", label):
        raise BodyInvalid(f"body.properties.ipAddress.dnsNameLabel: {label!r} is not a valid DNS label")


def _strip_secure(body: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    for c in out["properties"]["containers"]:
        for env in c["properties"].get("environmentVariables") or []:
            env.pop("secureValue", None)
    for v in out["properties"].get("volumes") or []:
        if "secret" in v:
            v["secret"] = {}
    for cred in out["properties"].get("imageRegistryCredentials") or []:
        cred.pop("password", None)  # x-ms-secret: never returned
    return out


@dataclass
class Group:
    sub: str
    rg: str
    name: str
    body: dict[str, Any]
    provisioning: str = "Pending"
    stopped: bool = False
    containers: dict[str, str] = field(default_factory=dict)  # name -> docker id
    infra: str | None = None
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    busy: bool = False
    generation: int = 0


@dataclass
class Fault:
    method: str
    path_contains: str
    status: int
    code: str
    message: str
    headers: dict[str, str]
    times: int


class FakeArm:
    """Start with `FakeArm(tmp_path)`; `env()` is what a client needs; `close()` removes everything."""

    def __init__(self, tmp_dir: Path, infra_image: str = "mldeploy/base:bookworm-py3.11", ready_timeout: float = 240.0):
        import trustme

        self.infra_image = infra_image
        self.volume_dir = Path(tmp_dir) / "volumes"  # secret volumes' files, bind-mounted read-only
        self.ready_timeout = ready_timeout
        self.instance = uuid.uuid4().hex[:8]
        self.tokens: dict[str, float] = {}
        self.groups: dict[tuple[str, str, str], Group] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.faults: list[Fault] = []
        self.registries: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.clusters: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.cluster_failures: dict[str, dict[str, str]] = {}
        self.cluster_seconds = 1.0
        # The kubeconfig's API server; None names the cluster's fqdn (which resolves nowhere). Engine tests
        # set a closed 127.0.0.1 port, so a Kubernetes client that tries it stays on loopback.
        self.kube_server: str | None = None
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.RLock()
        self.docker = docker.from_env()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.ca_path = tmp_dir / "fake-arm-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # shutdown() waits one poll
        self._thread.start()

    # -- what tests use -------------------------------------------------
    def issue_token(self, ttl: float = 3600) -> str:
        token = "fake-" + secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + ttl
        return token

    def env(self, token: str | None = None) -> dict[str, str]:
        return {"MLDEPLOY_ARM_TOKEN": token or self.issue_token(), "MLDEPLOY_ARM_CA_BUNDLE": str(self.ca_path)}

    def inject(self, method: str, path_contains: str, status: int, code: str = "", message: str = "",
               headers: dict[str, str] | None = None, times: int = 1) -> None:
        """The next `times` matching requests get this answer instead."""
        with self.lock:
            self.faults.append(Fault(method, path_contains, status, code or str(status), message or code, headers or {}, times))

    def add_registry(self, sub: str, rg: str, name: str, login_server: str, username: str, password: str,
                     location: str = "westeurope", admin: bool = True) -> None:
        """An ACR whose listCredentials returns these (the test's own registry with token auth)."""
        self.registries[(sub, rg, name)] = {"login_server": login_server, "username": username, "password": password,
                                            "password2": secrets.token_urlsafe(16), "location": location, "admin": admin}

    def fail_next_cluster(self, name: str, code: str = "VMSizeNotSupported", message: str = "") -> None:
        """The next PUT of this managed cluster ends provisioningState Failed with this error."""
        self.cluster_failures[name] = {"code": code, "message": message or f"cluster {name}: {code}"}

    def cluster(self, name: str) -> dict[str, Any] | None:
        return next((c for (_s, _r, n), c in self.clusters.items() if n == name), None)

    def cluster_view(self, key: tuple[str, str, str]) -> dict[str, Any]:
        c = self.clusters[key]
        body = json.loads(json.dumps(c["body"]))
        props = body.setdefault("properties", {})
        dns = props.get("dnsPrefix") or key[2]
        props.update({
            "provisioningState": c["state"],
            "powerState": {"code": "Running"},
            "currentKubernetesVersion": props.get("kubernetesVersion") or "1.33.2",
            "kubernetesVersion": props.get("kubernetesVersion") or "1.33.2",
            "fqdn": f"{dns}-{abs(hash(key)) % 10**8:08d}.hcp.{body['location']}.azmk8s.io",
            "nodeResourceGroup": f"MC_{key[1]}_{key[2]}_{body['location']}",
            "maxAgentPools": 100,
        })
        for pool in props.get("agentPoolProfiles") or []:
            pool.update({"provisioningState": c["state"], "powerState": {"code": "Running"},
                         "currentOrchestratorVersion": props["currentKubernetesVersion"]})
        if "identity" in body:
            body["identity"].update({"principalId": str(uuid.UUID(int=abs(hash(key)) % 2**128)), "tenantId": "00000000-0000-0000-0000-00000000000a"})
        body.update({"id": f"/subscriptions/{key[0]}/resourceGroups/{key[1]}/providers/Microsoft.ContainerService/managedClusters/{key[2]}",
                     "name": key[2], "type": "Microsoft.ContainerService/ManagedClusters"})
        return body

    def kubeconfig(self, key: tuple[str, str, str]) -> str:
        """A user kubeconfig naming the cluster's (fake, unresolvable) API server; nothing here serves it."""
        view = self.cluster_view(key)
        server = self.kube_server or f"https://{view['properties']['fqdn']}:443"
        user = f"clusterUser_{key[1]}_{key[2]}"
        token = self.clusters[key].setdefault("token", secrets.token_hex(32))
        return (
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- cluster:\n    server: {server}\n  name: {key[2]}\n"
            f"contexts:\n- context:\n    cluster: {key[2]}\n    user: {user}\n  name: {key[2]}\n"
            f"current-context: {key[2]}\n"
            f"users:\n- name: {user}\n  user:\n    token: {token}\n"
        )

    def _provision_cluster(self, key: tuple[str, str, str], op: str) -> None:
        time.sleep(self.cluster_seconds)  # the LRO is seen in progress at least once
        with self.lock:
            c = self.clusters.get(key)
            if c is None:
                return
            c["busy"] = False
            if c["fail"]:
                c["state"] = "Failed"
                self.operations[op] = {"status": "Failed", "error": c["fail"]}
            else:
                c["state"] = "Succeeded"
                self.operations[op] = {"status": "Succeeded"}

    def _delete_cluster(self, key: tuple[str, str, str], op: str) -> None:
        time.sleep(self.cluster_seconds / 2)
        with self.lock:
            self.clusters.pop(key, None)
            self.operations[op] = {"status": "Succeeded"}

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups.values() if g.name == name), None)

    def host_port(self, name: str, port: int = 80) -> int:
        """Where the group's public port is published on 127.0.0.1 (its fqdn is not resolvable here)."""
        g = self.group(name)
        assert g is not None and g.infra, f"no running group {name}"
        c = self.docker.containers.get(g.infra)
        return int(c.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])

    def stop_behind_back(self, name: str) -> None:
        g = self.group(name)
        assert g is not None
        self._remove_containers(g)
        g.stopped = True

    def delete_behind_back(self, name: str) -> None:
        g = self.group(name)
        assert g is not None
        self._remove_containers(g)
        with self.lock:
            del self.groups[(g.sub, g.rg, g.name)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for c in self.docker.containers.list(all=True, filters={"label": f"{LABEL}={self.instance}"}):
            c.remove(force=True)

    # -- behaviour ----------------------------------------------------------
    def view(self, g: Group) -> dict[str, Any]:
        body = _strip_secure(g.body)
        props = body["properties"]
        states = {}
        for cdef in props["containers"]:
            cname = cdef["name"]
            cid = g.containers.get(cname)
            state: dict[str, Any] = {"state": "Waiting", "detailStatus": ""}
            restarts = 0
            if cid:
                try:
                    c = self.docker.containers.get(cid)
                    st = c.attrs["State"]
                    restarts = c.attrs.get("RestartCount", 0)
                    if st["Running"]:
                        state = {"state": "Running", "startTime": st["StartedAt"], "detailStatus": ""}
                    else:
                        state = {"state": "Terminated", "exitCode": st["ExitCode"], "finishTime": st["FinishedAt"], "detailStatus": "Error" if st["ExitCode"] else "Completed"}
                except docker.errors.NotFound:
                    pass
            states[cname] = state["state"]
            cdef["properties"]["instanceView"] = {"restartCount": restarts, "currentState": state, "events": g.events.get(cname, [])}
        if g.stopped:
            group_state = "Stopped"
        elif states and all(s == "Running" for s in states.values()):
            group_state = "Running"
        elif any(s == "Terminated" for s in states.values()):
            group_state = "Failed" if g.provisioning == "Failed" else "Stopped"
        else:
            group_state = "Pending"
        props["provisioningState"] = g.provisioning
        props["instanceView"] = {"state": group_state, "events": []}
        if props.get("ipAddress"):
            props["ipAddress"]["ip"] = "127.0.0.1"
            if props["ipAddress"].get("dnsNameLabel"):
                props["ipAddress"]["fqdn"] = f"{props['ipAddress']['dnsNameLabel']}.{body['location']}.azurecontainer.io"
        body.update({
            "id": f"/subscriptions/{g.sub}/resourceGroups/{g.rg}/providers/Microsoft.ContainerInstance/containerGroups/{g.name}",
            "name": g.name,
            "type": "Microsoft.ContainerInstance/containerGroups",
        })
        return body

    def _remove_containers(self, g: Group) -> None:
        for cid in [*g.containers.values(), *([g.infra] if g.infra else [])]:
            try:
                self.docker.containers.get(cid).remove(force=True)
            except docker.errors.NotFound:
                pass
        g.containers, g.infra = {}, None

    def _event(self, g: Group, cname: str, name: str, message: str, type_: str = "Normal") -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        g.events.setdefault(cname, []).append(
            {"count": 1, "firstTimestamp": now, "lastTimestamp": now, "name": name, "message": message, "type": type_}
        )

    def _deploy(self, g: Group, op: str, generation: int) -> None:
        """Runs the group's containers; ACI restarts every container on an update."""
        try:
            self._remove_containers(g)
            g.events = {}
            g.provisioning = "Creating"
            props = g.body["properties"]
            tags = g.body.get("tags") or {}
            labels = {LABEL: self.instance, "mldeploy.fakearm.group": g.name}
            labels.update({k: v for k, v in tags.items() if k in ("mldeploy.project", "mldeploy.stack")})
            ports = {f"{p['port']}/{p.get('protocol', 'TCP').lower()}": ("127.0.0.1", None) for p in (props.get("ipAddress") or {}).get("ports") or []}
            infra = self.docker.containers.run(self.infra_image, ["sleep", "infinity"], detach=True, labels=labels,
                                               ports=ports, name=f"fakearm-{g.name}-{uuid.uuid4().hex[:6]}")
            g.infra = infra.id
            for cdef in props["containers"]:
                cp = cdef["properties"]
                self._event(g, cdef["name"], "Pulling", f'pulling image "{cp["image"]}"')
                try:
                    self._pull(cp["image"], props.get("imageRegistryCredentials") or [])
                except docker.errors.APIError as exc:
                    self._event(g, cdef["name"], "Failed", f'Failed to pull image "{cp["image"]}": {exc.explanation or exc}', "Warning")
                    self._finish(g, op, "Failed", {"code": "InaccessibleImage", "message":
                                                   f"The image '{cp['image']}' in container group '{g.name}' is not accessible. "
                                                   "Please check the image and registry credential."})
                    return
                self._event(g, cdef["name"], "Pulled", f'Successfully pulled image "{cp["image"]}"')
                env = {e["name"]: e.get("value", e.get("secureValue", "")) for e in cp.get("environmentVariables") or []}
                req = cp["resources"]["requests"]
                c = self.docker.containers.run(
                    cp["image"], detach=True, environment=env, labels=labels, network_mode=f"container:{infra.id}",
                    volumes=self._secret_volumes(g, props, cp, generation) or None,
                    entrypoint=cp.get("command") or None, nano_cpus=int(req["cpu"] * 1e9),
                    mem_limit=int(req["memoryInGB"] * 1024**3), name=f"fakearm-{g.name}-{cdef['name']}-{uuid.uuid4().hex[:6]}",
                )
                g.containers[cdef["name"]] = c.id
                self._event(g, cdef["name"], "Started", "Started container")
            host = self.docker.containers.get(infra.id).attrs["NetworkSettings"]["Ports"]
            deadline = time.monotonic() + self.ready_timeout
            while time.monotonic() < deadline:
                if g.generation != generation:
                    return
                failed = self._exited(g)
                if failed:
                    cname, code = failed
                    self._event(g, cname, "Killing", f"container {cname} terminated with exit code {code}", "Warning")
                    self._finish(g, op, "Failed", {"code": "ContainerGroupDeploymentFailed",
                                                   "message": f"Container '{cname}' of group '{g.name}' terminated with exit code {code}."})
                    return
                if all(self._ready(cdef, host) for cdef in props["containers"]):
                    self._finish(g, op, "Succeeded")
                    return
                time.sleep(0.5)
            self._finish(g, op, "Failed", {"code": "ContainerGroupDeploymentTimeout", "message": "readiness probes never passed"})
        except Exception as exc:  # a fake's own failure still ends the operation
            self._finish(g, op, "Failed", {"code": "InternalServerError", "message": f"fake ARM: {exc}"})

    def _secret_volumes(self, g: Group, props: dict[str, Any], cp: dict[str, Any], generation: int) -> dict[str, dict[str, str]]:
        """As ACI's secret volumes: each base64 value a file, mounted where the container asks (other kinds are not run)."""
        volumes = {v["name"]: v for v in props.get("volumes") or []}
        binds = {}
        for mount in cp.get("volumeMounts") or []:
            secret = (volumes.get(mount["name"]) or {}).get("secret")
            if secret is None:
                continue
            folder = self.volume_dir / g.name / f"{mount['name']}-{generation}"
            folder.mkdir(parents=True, exist_ok=True)
            for fname, b64 in secret.items():
                (folder / fname).write_bytes(base64.b64decode(b64))
            binds[str(folder)] = {"bind": mount["mountPath"], "mode": "ro" if mount.get("readOnly") else "rw"}
        return binds

    def _pull(self, image: str, credentials: list[dict[str, Any]] | None = None) -> None:
        """As ACI: an image of a registry named in imageRegistryCredentials is pulled with them, always."""
        server = image.split("/", 1)[0]
        cred = next((c for c in credentials or [] if c.get("server") == server), None)
        if cred is not None:
            auth = {"username": cred.get("username") or "", "password": cred.get("password") or ""}
            self.docker.images.pull(image, auth_config=auth)
            return
        try:
            self.docker.images.get(image)
        except docker.errors.ImageNotFound:
            self.docker.images.pull(image)

    def _exited(self, g: Group) -> tuple[str, int] | None:
        for cname, cid in g.containers.items():
            st = self.docker.containers.get(cid).attrs["State"]
            if not st["Running"]:
                return cname, st["ExitCode"]
        return None

    def _ready(self, cdef: dict[str, Any], host: dict[str, Any]) -> bool:
        probe = cdef["properties"].get("readinessProbe")
        if not probe or "httpGet" not in probe:
            return True
        get = probe["httpGet"]
        mapping = host.get(f"{get['port']}/tcp")
        if not mapping:
            return False
        if str(get.get("scheme") or "http").lower() == "https":
            # As ACI's probe: HTTPS without checking the certificate.
            conn = http.client.HTTPSConnection("127.0.0.1", int(mapping[0]["HostPort"]), timeout=2,
                                               context=ssl._create_unverified_context())
            try:
                conn.request("GET", get.get("path", "/"))
                return 200 <= conn.getresponse().status < 400
            except (OSError, http.client.HTTPException):
                return False
            finally:
                conn.close()
        try:
            r = requests.get(f"http://127.0.0.1:{mapping[0]['HostPort']}{get.get('path', '/')}", timeout=2)
            return 200 <= r.status_code < 400
        except requests.RequestException:
            return False

    def _finish(self, g: Group, op: str, status: str, error: dict[str, str] | None = None) -> None:
        with self.lock:
            g.provisioning = status
            g.busy = False
            self.operations[op] = {"status": status, **({"error": error} if error else {})}

    def _delete(self, key: tuple[str, str, str], op: str) -> None:
        g = self.groups.get(key)
        if g is not None:
            self._remove_containers(g)
            with self.lock:
                self.groups.pop(key, None)
        self.operations[op] = {"status": "Succeeded"}


def _handler(fake: FakeArm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            fake.requests.append((self.command, self.path, status))

        def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"code": code, "message": message}}, headers)

        def _auth(self) -> bool:
            header = self.headers.get("Authorization") or ""
            if not header.startswith("Bearer "):
                self._error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
                return False
            token = header.removeprefix("Bearer ")
            expiry = fake.tokens.get(token)
            if expiry is None:
                self._error(401, "InvalidAuthenticationToken", "The access token is invalid.")
                return False
            if expiry < time.time():
                when = time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime(expiry))
                now = time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime())
                self._error(401, "ExpiredAuthenticationToken",
                            f"The access token expiry UTC time '{when}' is earlier than current UTC time '{now}'.")
                return False
            return True

        def _fault(self) -> bool:
            with fake.lock:
                for f in fake.faults:
                    if f.times > 0 and f.method == self.command and f.path_contains in self.path:
                        f.times -= 1
                        self._error(f.status, f.code, f.message, f.headers)
                        return True
            return False

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            return json.loads(raw) if raw else None

        def _op_url(self, sub: str, location: str, op: str, namespace: str = "Microsoft.ContainerInstance") -> str:
            return (f"{fake.url}/subscriptions/{sub}/providers/{namespace}/locations/{location}/operations/{op}"
                    f"?api-version={API_VERSIONS[namespace]}")

        def handle_one(self) -> None:
            url = urlparse(self.path)
            body = self._body() if self.command in ("PUT", "POST", "PATCH") else None
            if not self._auth() or self._fault():
                return
            version = (parse_qs(url.query).get("api-version") or [""])[0]
            ns = NAMESPACE.search(url.path)
            expected = API_VERSIONS.get(ns.group(1)) if ns else None
            if expected is None:
                self._error(404, "InvalidResourceNamespace", f"no route for {url.path}")
                return
            if version != expected:
                self._error(400, "InvalidApiVersionParameter", f"The api-version '{version}' is invalid. The supported versions are '{expected}'.")
                return
            m = OP_PATH.match(url.path)
            if m and self.command == "GET":
                op = fake.operations.get(m["op"])
                if op is None:
                    self._error(404, "OperationNotFound", f"operation {m['op']} not found")
                else:
                    self._send(200, {"id": url.path, "name": m["op"], **op}, {"Retry-After": "1"})
                return
            m = REGISTRY_PATH.match(url.path)
            if m:
                self._registry(m)
                return
            m = CLUSTER_PATH.match(url.path)
            if m:
                self._cluster(m, body, version)
                return
            m = GROUP_PATH.match(url.path)
            if not m:
                self._error(404, "InvalidResourceType", f"no route for {url.path}")
                return
            key = (m["sub"], m["rg"], m["name"])
            rest = m["rest"] or ""
            g = fake.groups.get(key)
            not_found = (404, "ResourceNotFound",
                         f"The Resource 'Microsoft.ContainerInstance/containerGroups/{m['name']}' under resource group '{m['rg']}' was not found.")
            if rest == "" and self.command == "GET":
                self._send(200, fake.view(g)) if g else self._error(*not_found)
            elif rest == "" and self.command == "PUT":
                try:
                    validate_group_body(body)
                except BodyInvalid as exc:
                    self._error(400, "InvalidRequestContent", str(exc))
                    return
                with fake.lock:
                    if g is not None and g.busy:
                        self._error(409, "Conflict", f"The container group '{m['name']}' is being updated by another operation; retry later.")
                        return
                    created = g is None
                    if g is None:
                        g = fake.groups[key] = Group(m["sub"], m["rg"], m["name"], body)
                    g.body, g.busy, g.stopped, g.provisioning = body, True, False, "Pending"
                    g.generation += 1
                    op = uuid.uuid4().hex
                    fake.operations[op] = {"status": "InProgress"}
                threading.Thread(target=fake._deploy, args=(g, op, g.generation), daemon=True).start()
                self._send(201 if created else 200, fake.view(g),
                           {"Azure-AsyncOperation": self._op_url(m["sub"], body["location"], op), "Retry-After": "1"})
            elif rest == "" and self.command == "DELETE":
                if g is None:
                    self._send(204)
                    return
                op = uuid.uuid4().hex
                fake.operations[op] = {"status": "InProgress"}
                g.generation += 1
                threading.Thread(target=fake._delete, args=(key, op), daemon=True).start()
                loc = self._op_url(m["sub"], g.body["location"], op)
                self._send(202, None, {"Azure-AsyncOperation": loc, "Location": loc, "Retry-After": "1"})
            elif rest == "/stop" and self.command == "POST":
                if g is None:
                    self._error(*not_found)
                    return
                fake.stop_behind_back(m["name"])
                self._send(204)
            elif re.match(r"^/containers/[^/]+/logs$", rest) and self.command == "GET":
                cname = rest.split("/")[2]
                tail = int((parse_qs(url.query).get("tail") or ["100"])[0])
                cid = g.containers.get(cname) if g else None
                if not cid:
                    self._error(*not_found)
                    return
                try:
                    content = fake.docker.containers.get(cid).logs(tail=tail).decode(errors="replace")
                except docker.errors.NotFound:
                    content = ""
                self._send(200, {"content": content})
            else:
                self._error(405, "MethodNotAllowed", f"{self.command} {rest or '/'} is not served by this fake")

        def _registry(self, m: re.Match[str]) -> None:
            reg = fake.registries.get((m["sub"], m["rg"], m["name"]))
            if reg is None:
                self._error(404, "ResourceNotFound", f"The Resource 'Microsoft.ContainerRegistry/registries/{m['name']}' "
                                                     f"under resource group '{m['rg']}' was not found.")
                return
            rest = m["rest"] or ""
            if rest == "" and self.command == "GET":
                self._send(200, {"id": m.group(0), "name": m["name"], "type": "Microsoft.ContainerRegistry/registries",
                                 "location": reg["location"], "sku": {"name": "Basic", "tier": "Basic"},
                                 "properties": {"loginServer": reg["login_server"], "adminUserEnabled": reg["admin"],
                                                "provisioningState": "Succeeded"}})
            elif rest == "/listCredentials" and self.command == "POST":
                if not reg["admin"]:
                    self._error(400, "UnAuthorizedForCredentialOperations",
                                f"Cannot perform credential operations for {m.group(0)} as admin user is disabled. "
                                "Kindly enable admin user as per docs: https://docs.microsoft.com/en-us/azure/container-registry/container-registry-authentication#admin-account")
                    return
                self._send(200, {"username": reg["username"], "passwords": [{"name": "password", "value": reg["password"]},
                                                                             {"name": "password2", "value": reg["password2"]}]})
            else:
                self._error(405, "MethodNotAllowed", f"{self.command} {rest or '/'} is not served by this fake")

        def _cluster(self, m: re.Match[str], body: Any, version: str) -> None:
            from arm_spec import SpecViolation, check

            key = (m["sub"], m["rg"], m["name"])
            rest = m["rest"] or ""
            c = fake.clusters.get(key)
            not_found = (404, "ResourceNotFound", f"The Resource 'Microsoft.ContainerService/managedClusters/{m['name']}' "
                                                  f"under resource group '{m['rg']}' was not found.")
            if rest == "" and self.command == "GET":
                self._send(200, fake.cluster_view(key)) if c else self._error(*not_found)
            elif rest == "" and self.command == "PUT":
                try:
                    check("Microsoft.ContainerService", version, "ManagedCluster", body)
                except SpecViolation as exc:
                    self._error(400, "InvalidRequestContent", str(exc))
                    return
                for i, pool in enumerate((body.get("properties") or {}).get("agentPoolProfiles") or []):
                    if pool.get("mode") == "System" and int(pool.get("count") or 1) < 1:
                        self._error(400, "InvalidParameter", f"agentPoolProfiles[{i}].count: a System pool needs 1 to 1000 nodes")
                        return
                with fake.lock:
                    if c is not None and c["busy"]:
                        self._error(409, "OperationNotAllowed", f"Operation is not allowed because there's an in progress "
                                                                f"create managed cluster operation on {m['name']}.")
                        return
                    created = c is None
                    op = uuid.uuid4().hex
                    c = fake.clusters[key] = {"body": body, "state": "Creating" if created else "Updating", "busy": True,
                                              "fail": fake.cluster_failures.pop(m["name"], None)}
                    fake.operations[op] = {"status": "InProgress"}
                threading.Thread(target=fake._provision_cluster, args=(key, op), daemon=True).start()
                loc = self._op_url(m["sub"], body["location"], op, "Microsoft.ContainerService")
                self._send(201 if created else 200, fake.cluster_view(key), {"Azure-AsyncOperation": loc, "Retry-After": "1"})
            elif rest == "" and self.command == "DELETE":
                if c is None:
                    self._send(204)
                    return
                op = uuid.uuid4().hex
                fake.operations[op] = {"status": "InProgress"}
                c["state"] = "Deleting"
                threading.Thread(target=fake._delete_cluster, args=(key, op), daemon=True).start()
                loc = self._op_url(m["sub"], c["body"]["location"], op, "Microsoft.ContainerService")
                self._send(202, None, {"Azure-AsyncOperation": loc, "Location": loc, "Retry-After": "1"})
            elif rest == "/listClusterUserCredential" and self.command == "POST":
                if c is None:
                    self._error(*not_found)
                    return
                import base64

                kubeconfig = fake.kubeconfig(key)
                self._send(200, {"kubeconfigs": [{"name": "clusterUser", "value": base64.b64encode(kubeconfig.encode()).decode()}]})
            else:
                self._error(405, "MethodNotAllowed", f"{self.command} {rest or '/'} is not served by this fake")

        do_GET = do_PUT = do_DELETE = do_POST = do_PATCH = handle_one

    return Handler
