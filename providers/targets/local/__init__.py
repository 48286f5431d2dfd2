"""The local target: scoring containers on this machine behind the stack's gateway.

The gateway (nginx, host network, 127.0.0.1 only) owns each service's stable
port and checks its keys. Backends have no network: each serves on a Unix socket
in its service's folder (`<stateDir>/sockets/<project>-<stack>/<service>/run/`),
which only the gateway also mounts, so the key cannot be bypassed. They run as
nobody with no capabilities and restart by themselves (OOM kill, crash, dockerd
restart) once proven.

A roll starts the new backend, waits until it is healthy, sends it the entry
script's own input sample (`mldeploy.providers.gate.sample_check`) and needs a 200 that
matches the output schema, then re-points the route's socket link (no nginx
reload: client keep-alive connections stay open), waits until the old backend
has answered every request it accepted, and only then stops it, so the scoring
URI never breaks and no request is lost or sent twice. A backend that fails
either step is removed (its log kept under `<stateDir>/logs/`) and the route
never moves.

Workers: one per whole CPU core of `cpu_cores`, at least one
(`worker_count` overrides it).
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from pulumi.dynamic import CheckFailure
from pydantic import BaseModel, ConfigDict, Field

from mldeploy.providers.core import containers, scoring
from mldeploy.providers.targets.local.gateway import Gateway, port_free
from mldeploy.providers.targets.local.canary import LocalTrafficControl
from mldeploy.providers.targets.local import standby as warm
from mldeploy.providers.front.gateway_config import (
    CANDIDATE_LINK, CONTAINER_BACKENDS_DIR, CONTAINER_RUNTIME_DIR, SCORING_SOCKET_DIR, SplitRoute, backend_socket,
)
from mldeploy.providers.rollouts.engine import RolledBack, RolloutRecord, run_canary
from mldeploy.providers.rollouts.records import record_path, save_record
from mldeploy.providers.rollouts.spec import Canary
from mldeploy.providers.rollouts.words import canary_words, held_words, held_weights
from mldeploy.providers.core.paths import local
from mldeploy.providers.gate.sample_check import check_sample
from mldeploy.providers.targets import ArgsInvalid, Target, WholeNumber, check_environment, service_uris, validate_args
from mldeploy.providers.core.progress import say
from mldeploy.providers.core import keys as service_keys
from mldeploy.providers.core.naming import MODELS_ROOT
from mldeploy.providers.core.settings import Settings

PORT_RANGE = (20000, 29999)
RESERVED_PORTS = frozenset({23790, 23800, 23810})
"""Inside PORT_RANGE but the local cluster's etcd listens there (client, peer, metrics;
scripts/k8s/cluster.sh): a service is never given one, or its create would fail whenever the cluster runs."""
# Ports claimed by services of this program run, so two services never share one.
# A context variable: the Automation API runs each program in a fresh context of
# the same process, so a second run starts with no claims.
_claims: contextvars.ContextVar[dict[int, str] | None] = contextvars.ContextVar("mldeploy_port_claims", default=None)


_progress = say  # one style of progress line for every provider


def model_mounts(models: list[dict[str, Any]]) -> tuple[dict[str, str], str]:
    """Host dirs to mount and the AZUREML_MODEL_DIR value, as Azure ML lays them out.

    A model's folder is relative to the project in the inputs; Docker needs it absolute.
    """
    mounts = {str(local(m["model_dir"])): f"{MODELS_ROOT}/{m['name']}/{int(m['version'])}" for m in models}
    if len(models) == 1:
        return mounts, f"{MODELS_ROOT}/{models[0]['name']}/{int(models[0]['version'])}"
    return mounts, MODELS_ROOT


def machine_cores() -> int:
    """CPUs Docker can give a container here (it refuses a limit above them)."""
    return os.cpu_count() or 1


def workers_for(cpu_cores: float, worker_count: int | None = None) -> int:
    """The documented rule: one scoring worker per whole core, at least one; an explicit
    `worker_count` wins. Each worker runs init() and holds the model in its own memory."""
    if worker_count:
        return int(worker_count)
    return max(1, int(cpu_cores))


def check_cpu_cores(cpu_cores: Any, cores: int | None = None) -> list[CheckFailure]:
    """A limit above the machine's cores would be refused by Docker when the backend starts."""
    cores = machine_cores() if cores is None else cores
    if isinstance(cpu_cores, (int, float)) and not isinstance(cpu_cores, bool) and cpu_cores > cores:
        return [CheckFailure("cpu_cores", f"at most {cores} on the local target: this machine has {cores} CPU cores, got {cpu_cores!r}")]
    return []


def failed_logs_dir(props: Mapping[str, Any]) -> Path:
    """Where the logs of a service's failed backends are kept (removed containers keep no log).

    One file per failed backend, mode 0600; they stay until the service's next
    successful create or roll, and `scripts/stack.py logs` shows them.
    """
    return local(props["state_dir"]) / "logs" / f"{props['project']}-{props['stack']}" / props["service_name"]


def uris(props: Mapping[str, Any]) -> dict[str, str]:
    return service_uris(f"http://127.0.0.1:{int(props['port'])}", props["service_name"])


def _claimed_ports() -> dict[int, str]:
    claims = _claims.get()
    if claims is None:
        claims = {}
        _claims.set(claims)
    return claims


def default_port(project: str, stack: str, service_name: str) -> int:
    """Stable across runs and machines, so the scoring URI does not move."""
    digest = int(hashlib.sha256(f"{project}/{stack}/{service_name}".encode()).hexdigest(), 16)
    lo, hi = PORT_RANGE
    port = lo + digest % (hi - lo + 1)
    while port in _claimed_ports() or port in RESERVED_PORTS:
        port = lo + (port - lo + 1) % (hi - lo + 1)
    return port


class LocalArgs(BaseModel):
    """What only the local target takes: its front end and where it keeps files."""

    model_config = ConfigDict(extra="forbid")

    port: WholeNumber = Field(ge=1024, le=65535)
    """The service's stable port on 127.0.0.1; `service_inputs` derives it from the names when not given."""
    gateway_image: str = Field(min_length=1)
    """The stack's nginx gateway runs from it (`mldeploy:gatewayImage`)."""
    state_dir: str = Field(min_length=1)
    """The gateway's config lives under it (`mldeploy:stateDir`); relative to the project."""
    worker_count: WholeNumber | None = Field(default=None, ge=1, le=64)
    """Scoring workers; None: one per whole core of `cpu_cores` (`workers_for`)."""
    warm_standby: bool | None = None
    """True: the next backend waits beside the live one, libraries imported, for a model-only
    update to hand it the new version (`mldeploy.providers.targets.local.standby`). It costs the
    memory of a second idle server; one-model services only."""


class LocalTarget(Target):
    """Docker containers plus one nginx gateway per stack."""

    name = "local"
    Args = LocalArgs
    # Limits, environment and the state folder (a mount) are fixed when a container starts.
    ROLL_ON = ("cpu_cores", "memory_gb", "environment_variables", "state_dir", "worker_count")
    # The gateway holds the port and the keys: the backend keeps running.
    # A held split or mirror moves weights in the route; removing it promotes the held version.
    ROUTE_ON = ("port", "auth_enabled", "primary_key_version", "secondary_key_version", "max_request_bytes", "gateway_image",
                "traffic", "mirror_percent", "warm_standby")
    OUTPUTS = ("container_id", "backend_socket", "candidate", "standby")
    PATHS = ("state_dir",)
    sample_gate = True

    def service_inputs(
        self, given: Mapping[str, Any], *, service_name: str, resource_name: str, settings: Settings
    ) -> dict[str, Any]:
        """Picks and claims the port, so two services of one program never share it."""
        port = given.get("port")
        if port is None:
            port = default_port(settings.project, settings.stack, service_name)
        data = {**given, "port": port, "gateway_image": settings.gateway_image, "state_dir": settings.state_dir}
        data.setdefault("worker_count", None)
        args = validate_args(LocalArgs, data)
        claimed = _claimed_ports()
        if args.port in claimed:
            raise ArgsInvalid([CheckFailure("port", f"{args.port} is already used by service '{claimed[args.port]}'")])
        claimed[args.port] = resource_name
        return args.model_dump()

    def uris(self, props: Mapping[str, Any]) -> dict[str, str]:
        return uris(props)

    def check_shared(self, inputs: Mapping[str, Any]) -> list[CheckFailure]:
        return check_cpu_cores(inputs.get("cpu_cores")) + check_environment(inputs.get("environment_variables"))

    def check(self, news: Mapping[str, Any]) -> list[CheckFailure]:
        return super().check(news) + self.check_shared(news)

    def needs_roll(self, olds: Mapping[str, Any]) -> bool:
        """A backend of an earlier release: published on a TCP port on Docker's bridge."""
        return bool(olds.get("container_id")) and not olds.get("backend_socket")

    def _gateway(self, props: dict[str, Any]) -> Gateway:
        scope = f"{props['project']}-{props['stack']}"
        state = local(props["state_dir"])
        return Gateway(
            props["project"], props["stack"], str(state / "gateway" / scope), props["gateway_image"],
            sockets_dir=str(state / "sockets" / scope),
        )

    def _labels(self, props: dict[str, Any]) -> dict[str, str]:
        return containers.labels_for(props["project"], props["stack"], props["service_name"], kind="service")

    def _keys(self, olds: dict[str, Any] | None, news: dict[str, Any]) -> tuple[str | None, str | None]:
        """Keys are made once and kept; bumping a key's version rotates that key alone."""
        if not news.get("auth_enabled"):
            return None, None
        made = service_keys.rotate(olds, news)
        return made["primary_key"], made["secondary_key"]

    def _env(self, props: dict[str, Any], model_dir: str | None) -> dict[str, str]:
        env = {
            **(props.get("environment_variables") or {}),
            "WORKER_COUNT": str(workers_for(float(props["cpu_cores"]), props.get("worker_count"))),
            # The Swagger document then names the paths clients call through the gateway.
            "SERVICE_NAME": props["service_name"],
            "SERVICE_PATH_PREFIX": f"api/v1/service/{props['service_name']}",
        }
        if model_dir is not None:
            env["AZUREML_MODEL_DIR"] = model_dir
        return env

    def _start_backend(self, gw: Gateway, props: dict[str, Any], standby: dict[str, Any] | None = None) -> containers.RunningContainer:
        """A new backend, proven; `standby` (a usable one from the state) is handed the model instead of starting one."""
        mounts, model_dir = model_mounts(props["models"])
        for host_dir in mounts:
            if not os.path.isdir(host_dir):
                raise containers.ServiceStartError(f"model directory {host_dir} is missing from the registry")
        workers = workers_for(float(props["cpu_cores"]), props.get("worker_count"))
        run_dir = gw.prepare_service(props["service_name"])
        if standby is not None:
            name = standby["name"]
            _progress(f"{props['service_name']}: handing {model_dir} to the warm standby {name}")
            rc = containers.RunningContainer(standby["id"], name, 0, str(run_dir / standby["socket"]))
            warm.write_go(run_dir, standby["socket"], model_dir)
        else:
            env = self._env(props, model_dir)
            command = warm.boot_command(containers.image_command(props["image_name"])) if warm.wanted(props) else None
            if command is not None:  # it records what its worker imports, for the next standby
                env["MLDEPLOY_WARM_OUT"] = f"{SCORING_SOCKET_DIR}/{warm.WARM_MODULES}"
            token = uuid.uuid4().hex[:8]
            name = f"mldeploy-{props['project']}-{props['stack']}-{props['service_name']}-{token}"
            _progress(f"{props['service_name']}: starting {name} from {props['image_name']} ({workers} worker(s))")
            rc = containers.run_socket_container(
                name,
                props["image_name"],
                self._labels(props),
                env,
                mounts,
                float(props["cpu_cores"]),
                float(props["memory_gb"]),
                str(run_dir),
                f"{token}.sock",
                SCORING_SOCKET_DIR,
                command=command,
            )
        try:
            containers.wait_healthy(rc, timeout=float(props.get("startup_timeout_seconds") or 180))
            _progress(f"{props['service_name']}: {name} is healthy on its socket")
            self._prove(props, rc)
            containers.keep_running(rc.id)
        except BaseException as exc:
            self._keep_log(props, rc, exc)
            containers.remove(rc.id, stop_timeout=2)
            raise
        return rc

    def _start_standby(self, gw: Gateway, props: dict[str, Any]) -> dict[str, Any] | None:
        """Start the next backend, with no model; never fails the update (a cold roll is the fallback)."""
        command = warm.boot_command(containers.image_command(props["image_name"]))
        home = warm.model_home(props)
        if command is None or home is None:
            return None
        token = uuid.uuid4().hex[:8]
        name = f"mldeploy-{props['project']}-{props['stack']}-{props['service_name']}-{token}"
        inside = f"{SCORING_SOCKET_DIR}/{warm.WARM_MODULES}"
        env = {**self._env(props, None), "MLDEPLOY_STANDBY_GO": f"{SCORING_SOCKET_DIR}/{warm.go_file(token + '.sock')}",
               "MLDEPLOY_WARM_IN": inside, "MLDEPLOY_WARM_OUT": inside}
        try:
            rc = containers.run_socket_container(
                name, props["image_name"], {**self._labels(props), warm.STARTED_AS_LABEL: warm.KIND}, env, {home[0]: home[1]},
                float(props["cpu_cores"]), float(props["memory_gb"]), str(gw.prepare_service(props["service_name"])),
                f"{token}.sock", SCORING_SOCKET_DIR, command=command,
            )
        except Exception as exc:  # noqa: BLE001 - said, and the next model update starts a container as before
            _progress(f"{props['service_name']}: no warm standby ({exc})")
            return None
        _progress(f"{props['service_name']}: warm standby {name} waits for the next model version")
        return {"id": rc.id, "name": name, "socket": f"{token}.sock", "signature": warm.signature(props)}

    def _usable_standby(self, olds: Mapping[str, Any], news: Mapping[str, Any]) -> dict[str, Any] | None:
        standby = olds.get("standby")
        if warm.usable(standby, news) and containers.status(standby["id"]) == "running":
            return dict(standby)
        return None

    def _sync_standby(self, gw: Gateway, props: dict[str, Any], live_id: str, keep: dict[str, Any] | None) -> dict[str, Any] | None:
        """The standby the state keeps after this operation: `keep` while still usable, else a new one
        when wanted; any other standby of the service is removed."""
        current = keep if keep and keep.get("id") != live_id and warm.usable(keep, props) \
            and containers.status(keep["id"]) == "running" else None
        if current is None and warm.wanted(props):
            current = self._start_standby(gw, props)
        for cid in containers.find({**self._labels(props), warm.STARTED_AS_LABEL: warm.KIND}):
            if cid not in (live_id, (current or {}).get("id")):
                containers.remove(cid, stop_timeout=1)
        return current

    def _prove(self, props: dict[str, Any], rc: containers.RunningContainer) -> None:
        """The new backend answers the entry script's input sample as its output schema says, or fails."""
        transport = scoring.unix_transport(rc.socket) if rc.socket else scoring.http_transport(rc.host_port)
        check = check_sample(transport, props.get("sample_request"))
        if not check.gated:
            _progress(f"{props['service_name']}: {check.summary()} ({rc.name})")
            return
        if not check.ok:
            time.sleep(0.3)  # the traceback of a failed run() is logged just after the answer
            whose = "sample_request" if props.get("sample_request") else "the entry script's sample request"
            raise containers.ServiceStartError(
                f"container {rc.name} started but failed {whose}, so no traffic "
                f"moved to it and it was removed:\n{check.report()}\n"
                f"the last lines of its log:\n{containers.logs(rc.id, tail=40)}"
            )
        what = "sample_request" if props.get("sample_request") else "the input sample"
        _progress(f"{props['service_name']}: {rc.name} answered {what}: {check.summary()}")

    def _keep_log(self, props: dict[str, Any], rc: containers.RunningContainer, exc: BaseException) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = failed_logs_dir(props) / f"{stamp}-{rc.name}.log"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        containers.save_log(rc.id, path, f"# {rc.name} from {props['image_name']}, removed at {stamp}: {reason}")

    def _forget_failures(self, props: dict[str, Any]) -> None:
        """A successful create or roll supersedes the failed backends' logs."""
        folder = failed_logs_dir(props)
        for f in folder.glob("*.log") if folder.is_dir() else []:
            f.unlink(missing_ok=True)

    def _route(self, gw: Gateway, props: dict[str, Any], keys: tuple[str | None, str | None], split: SplitRoute | None = None) -> None:
        """The route names the service's socket link, whichever backend it points at (and a canary's, during one)."""
        gw.put_route(
            props["service_name"],
            int(props["port"]),
            None,
            [k for k in keys if k] if props.get("auth_enabled") else None,
            int(props.get("max_request_bytes") or 1_048_576),
            backend_socket=backend_socket(props["service_name"]),
            split=split,
        )

    def _outs(self, props: dict[str, Any], rc_id: str, socket_name: str, keys: tuple[str | None, str | None]) -> dict[str, Any]:
        outs = {k: v for k, v in props.items() if k != "backend_port"}  # an earlier release's output
        return {
            **outs,
            **uris(props),
            "container_id": rc_id,
            "backend_socket": socket_name,
            "primary_key": keys[0] or "",
            "secondary_key": keys[1] or "",
            "state": "Healthy",
            "model_versions": {m["name"]: int(m["version"]) for m in props["models"]},
        }

    def _remove_orphans(self, props: dict[str, Any], keep: set[str], standbys: bool = False) -> None:
        """Backends not in `keep`. Containers started as standbys are `_sync_standby`'s (it knows
        which one is live now), unless `standbys` (nothing of the service is live: create, delete)."""
        spared = set() if standbys else set(containers.find({**self._labels(props), warm.STARTED_AS_LABEL: warm.KIND}))
        for cid in containers.find(self._labels(props)):
            if cid not in keep and cid not in spared:
                _progress(f"{props['service_name']}: removing leftover container {cid[:12]}")
                containers.remove(cid, stop_timeout=2)

    def create(self, props: dict[str, Any]) -> dict[str, Any]:
        gw = self._gateway(props)
        port = int(props["port"])
        if props["service_name"] not in gw.routes() and not port_free(port):
            raise containers.ServiceStartError(f"port {port} on 127.0.0.1 is already in use; choose another `port`")
        self._remove_orphans(props, keep=set(), standbys=True)
        keys = self._keys(None, props)
        gw.ensure()
        rc = self._start_backend(gw, props)
        socket_name = os.path.basename(rc.socket or "")
        try:
            gw.switch_backend(props["service_name"], socket_name)
            self._route(gw, props, keys)
        except BaseException:
            containers.remove(rc.id, stop_timeout=2)
            raise
        self._forget_failures(props)
        return {**self._outs(props, rc.id, socket_name, keys), "standby": self._sync_standby(gw, props, rc.id, None)}

    def update(self, olds: dict[str, Any], news: dict[str, Any], roll: bool) -> dict[str, Any]:
        outs = self._update(olds, news, roll)
        live = outs.get("container_id") or ""
        return {**outs, "standby": self._sync_standby(self._gateway(news), news, live, olds.get("standby"))}

    def _update(self, olds: dict[str, Any], news: dict[str, Any], roll: bool) -> dict[str, Any]:
        gw = self._gateway(news)
        keys = self._keys(olds, news)
        gw.ensure()
        old_id = olds.get("container_id") or ""
        old_socket = olds.get("backend_socket") or ""
        roll = roll or self.needs_roll(olds)
        held, candidate = held_weights(news), olds.get("candidate") or None
        serving = bool(old_socket) and containers.status(old_id) == "running"
        if held is not None and serving and (roll or candidate):
            return self._hold(gw, olds, news, keys, held, candidate, restart=roll)
        if candidate and held is None and not roll and serving:
            return self._promote_held(gw, olds, news, keys, candidate)
        if candidate:
            self._drop_held(gw, news, candidate)  # a newer version replaces the one held beside the current
        if not roll and containers.status(old_id) == "running":
            self._route(gw, news, keys)
            self._remove_orphans(news, keep={old_id})
            return self._outs(news, old_id, old_socket, keys)
        if news.get("rollout") and old_id and old_socket and containers.status(old_id) == "running":
            rc = self._canary(gw, olds, news, keys)  # on rollback the old backend never stopped serving
            socket_name = os.path.basename(rc.socket or "")
        else:
            # On failure the old backend keeps serving; a warm standby, when usable, is handed the new version.
            rc = self._start_backend(gw, news, standby=self._usable_standby(olds, news))
            socket_name = os.path.basename(rc.socket or "")
            previous = gw.current_backend(news["service_name"])
            try:
                gw.switch_backend(news["service_name"], socket_name)
                self._route(gw, news, keys)
            except BaseException:
                if previous:
                    gw.switch_backend(news["service_name"], previous)
                containers.remove(rc.id, stop_timeout=2)
                raise
        if old_id and old_socket:
            # Requests the old backend accepted before the switch are answered first.
            if not containers.wait_idle(old_id, f"{SCORING_SOCKET_DIR}/{old_socket}"):
                _progress(f"{news['service_name']}: the old backend still had connections after 90 s; stopping it")
        elif old_id:
            gw.wait_drained()  # an earlier release's TCP backend: old nginx workers finish first
        if old_id:
            containers.remove(old_id)
        self._remove_orphans(news, keep={rc.id})
        if olds.get("image_name") and olds["image_name"] != news["image_name"]:
            from mldeploy.providers.images.build import remove_image

            remove_image(olds["image_name"])  # kept when something still uses it
        self._forget_failures(news)
        return self._outs(news, rc.id, socket_name, keys)

    def _canary(self, gw: Gateway, olds: dict[str, Any], news: dict[str, Any], keys: tuple[str | None, str | None]) -> containers.RunningContainer:
        """The new backend takes each step's share of live requests, judged on the gateway's split log
        (`mldeploy.providers.rollouts.engine.run_canary`); the record is kept whatever the outcome."""
        canary = Canary.model_validate(news["rollout"])
        control = LocalTrafficControl(self, gw, olds, news, keys)
        record = RolloutRecord()
        name = news["service_name"]
        versions = {m["name"]: int(m["version"]) for m in news["models"]}
        _progress(f"{name}: {canary_words(canary)}")
        try:
            run_canary(control, canary, say=lambda line: _progress(f"{name}: {line}"), record=record)
        except RolledBack as exc:
            raise containers.ServiceStartError(
                f"{exc}. The new backend was removed (its log: `scripts/stack.py logs`); the state stays on the "
                "old version, so the next preview shows the same change") from None
        finally:
            save_record(record_path(local(news["state_dir"]), news["project"], news["stack"], name), record,
                        plan=canary_words(canary), versions=versions)
        assert control.candidate is not None
        return control.candidate

    def _hold(self, gw: Gateway, olds: dict[str, Any], news: dict[str, Any], keys: tuple[str | None, str | None],
              held: tuple[int, int], candidate: dict[str, Any] | None, restart: bool) -> dict[str, Any]:
        """The new version serves beside the current one until the program says otherwise: `traffic`
        sends it a share of requests, `mirror_percent` a copy of a share (answers discarded)."""
        name = news["service_name"]
        if restart or candidate is None or containers.status(candidate.get("container_id") or "") != "running":
            if candidate:
                self._drop_held(gw, news, candidate)
            rc = self._start_backend(gw, news)  # its sample gate first; on failure nothing moved
            socket_name = os.path.basename(rc.socket or "")
            gw.switch_backend(name, socket_name, link=CANDIDATE_LINK)
            candidate = {
                "container_id": rc.id,
                "socket": socket_name,
                "split_log": f"{CONTAINER_RUNTIME_DIR}/split-{name}-{uuid.uuid4().hex[:8]}.log",
                "model_versions": {m["name"]: int(m["version"]) for m in news["models"]},
            }
        weight, mirror = held
        split = SplitRoute(f"{CONTAINER_BACKENDS_DIR}/{name}/{CANDIDATE_LINK}", weight, candidate["split_log"], mirror)
        self._route(gw, news, keys, split=split)
        _progress(f"{name}: {held_words(news)}")
        outs = self._outs(news, olds["container_id"], olds["backend_socket"], keys)
        # The current version still serves most requests: its versions stay the service's.
        return {**outs, "model_versions": olds.get("model_versions") or outs["model_versions"], "candidate": candidate}

    def _promote_held(self, gw: Gateway, olds: dict[str, Any], news: dict[str, Any], keys: tuple[str | None, str | None],
                      candidate: dict[str, Any]) -> dict[str, Any]:
        """The held version takes every request: `current.sock` moves to it, the split goes, the old backend drains."""
        name = news["service_name"]
        gw.switch_backend(name, candidate["socket"])
        self._route(gw, news, keys)
        gw.drop_candidate(name)
        gw.remove_split_log(candidate["split_log"])
        _progress(f"{name}: the held version takes all traffic")
        old_id = olds["container_id"]
        if not containers.wait_idle(old_id, f"{SCORING_SOCKET_DIR}/{olds['backend_socket']}"):
            _progress(f"{name}: the old backend still had connections after 90 s; stopping it")
        containers.remove(old_id)
        return {**self._outs(news, candidate["container_id"], candidate["socket"], keys), "candidate": None}

    def _drop_held(self, gw: Gateway, props: dict[str, Any], candidate: dict[str, Any]) -> None:
        """The held version goes; the route is rewritten by whoever called this."""
        gw.drop_candidate(props["service_name"])
        gw.remove_split_log(candidate.get("split_log") or "")
        if candidate.get("container_id"):
            containers.remove(candidate["container_id"], stop_timeout=2)

    def read(self, props: dict[str, Any]) -> dict[str, Any]:
        current = props.get("container_id") or ""
        status = containers.status(current)
        gw = self._gateway(props)
        routed = props["service_name"] in gw.routes() and gw.is_running()
        if props.get("backend_socket") and gw.current_backend(props["service_name"]) != props["backend_socket"]:
            routed = False  # the route's link points elsewhere (or is gone): the next up re-points it
        held = (props.get("candidate") or {}).get("container_id")
        leftovers = [c for c in containers.find(self._labels(props)) if c not in (current, held)]
        if held and containers.status(held) != "running":
            routed = False  # the held version is gone: the next up starts it again
        if status == "running" and routed:
            # Containers of an interrupted roll: the next up removes them, no roll needed.
            state = "Orphaned" if leftovers else "Healthy"
        elif status is None:
            state = "Missing"
        else:
            state = "Unhealthy" if status == "running" else "Stopped"
        return {**props, "state": state}

    def delete(self, props: dict[str, Any]) -> None:
        gw = self._gateway(props)
        gw.remove_route(props["service_name"])
        if props.get("candidate"):
            self._drop_held(gw, props, props["candidate"])
        if props.get("container_id"):
            containers.remove(props["container_id"])
        self._remove_orphans(props, keep=set(), standbys=True)
        self._forget_failures(props)
        gw.remove_service_dir(props["service_name"])
        gw.remove_if_unused()


TARGET = LocalTarget()
