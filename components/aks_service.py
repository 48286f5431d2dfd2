"""AksService: a scoring web service on an `AksCluster`, as Azure ML's `AksWebservice`.

Built from pulumi-kubernetes resources, so the engine's own await logic waits for
each rollout and `preview` asks the API server. What the target knows (the
arguments and Azure ML's rules for them, the object specs) lives in
`mldeploy.providers.targets.kubernetes`; this module only wires the resources.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pulumi.dynamic import Resource

from mldeploy.components._common import PACKAGE, ArgsError, args_class, sample_request_input, takes_args, validate
from mldeploy.components.aks_cluster import AksCluster
from mldeploy.components.registry_image import RegistryImage
from mldeploy.components.inference_image import InferenceImage
from mldeploy.components.registered_model import RegisteredModel
from mldeploy.providers.core.keys import ServiceKeysProvider
from mldeploy.providers.rollouts.spec import Canary, TrafficSplit, check_rollout
from mldeploy.providers.targets.kubernetes.canary import CanaryProvider
from mldeploy.providers.targets.kubernetes.rollout import RolloutProvider
from mldeploy.providers.targets import kubernetes as target
from mldeploy.providers.front import tls

OUTPUTS = ("scoring_uri", "swagger_uri", "primary_key", "secondary_key", "model_versions", "node_port")


class ServiceKeys(Resource, module=PACKAGE, name="ServiceKeys"):
    """A service's primary and secondary keys (dynamic resource, secret outputs)."""

    primary_key: pulumi.Output[str]
    secondary_key: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(ServiceKeysProvider(), name, {**props, "primary_key": None, "secondary_key": None}, opts)


class Rollout(Resource, module=PACKAGE, name="Rollout"):
    """The check that a Deployment's new generation rolled out (dynamic resource; see mldeploy.providers.targets.kubernetes.rollout)."""

    revision: pulumi.Output[str]
    available_replicas: pulumi.Output[int]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(RolloutProvider(), name, {**props, "revision": None, "available_replicas": None}, opts)


class KubernetesCanary(Resource, module=PACKAGE, name="KubernetesCanary"):
    """An AksService's canary, run before its Deployment is updated (dynamic resource; see
    mldeploy.providers.targets.kubernetes.canary)."""

    last: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(CanaryProvider(), name, {**props, "last": None}, opts)


def _canary(resource_name: str, rollout: Any, traffic: Any, mirror_percent: Any = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """`rollout=Canary(...)` and `traffic=` as plain data, the shared rules (with `mirror_percent`'s) checked now,
    each failure naming its field."""
    if rollout is not None and not isinstance(rollout, (Canary, dict)):
        raise ArgsError(f"AksService '{resource_name}': invalid arguments: rollout: must be a Canary "
                        f"(from mldeploy.components import Canary), got {type(rollout).__name__}")
    given = {"rollout": rollout.model_dump() if isinstance(rollout, Canary) else rollout,
             "traffic": traffic.model_dump() if isinstance(traffic, TrafficSplit) else traffic,
             "mirror_percent": mirror_percent}
    problems = check_rollout("kubernetes", given)
    if problems:
        raise ArgsError(f"AksService '{resource_name}': invalid arguments: " + "; ".join(f"{f}: {m}" for f, m in problems))
    return (Canary.model_validate(given["rollout"]).model_dump() if rollout is not None else None,
            TrafficSplit.model_validate(given["traffic"]).model_dump() if traffic is not None else None)


class AksService(pulumi.ComponentResource):
    """Deploys models with an image on a cluster; a new model version rolls its pods, one at a time."""

    scoring_uri: pulumi.Output[str]
    swagger_uri: pulumi.Output[str]
    primary_key: pulumi.Output[str]
    secondary_key: pulumi.Output[str]
    model_versions: pulumi.Output[dict[str, int]]
    node_port: pulumi.Output[int]

    @takes_args
    def __init__(
        self,
        resource_name: str,
        cluster: AksCluster,
        models: list[RegisteredModel],
        image: InferenceImage,
        service_name: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
        **deploy_configuration: Any,
    ):
        """`deploy_configuration` takes `AksWebservice.deploy_configuration`'s parameters, plus
        `sample_request` (a dict, or a JSON file) and `sample_response`: a new pod must answer
        that request (with that answer, when given) before it gets traffic. `rollout=Canary(...)`: a new
        version takes each step's share of live requests first and is promoted or rolled back on what the
        pods' front ends recorded; `traffic={"current": 90, "candidate": 10}` holds it beside the current
        one until the program drops it, and `mirror_percent=20` copies that share of requests to it (answers
        discarded) (docs/rollouts.md, "On Kubernetes")."""
        try:
            sample = sample_request_input(deploy_configuration.pop("sample_request", None),
                                          deploy_configuration.pop("sample_response", None))
        except ValueError as exc:
            raise ArgsError(f"AksService '{resource_name}': invalid arguments: {exc}") from None
        mirror = deploy_configuration.pop("mirror_percent", None)
        canary, held = _canary(resource_name, deploy_configuration.pop("rollout", None), deploy_configuration.pop("traffic", None),
                               mirror)
        holds = held is not None or bool(mirror)
        splits = canary is not None or holds
        args = validate(
            target.KubernetesServiceArgs,
            "AksService",
            resource_name,
            {"service_name": service_name or resource_name, **deploy_configuration},
        )
        failures = target.check(args)
        if failures:
            raise ArgsError(f"AksService '{resource_name}': invalid arguments: " + "; ".join(f"{f}: {m}" for f, m in failures))
        if not isinstance(cluster, AksCluster):
            raise ArgsError(f"AksService '{resource_name}': invalid arguments: cluster: must be an AksCluster, got {type(cluster).__name__}")
        if not models or not all(isinstance(m, RegisteredModel) for m in models):
            raise ArgsError(f"AksService '{resource_name}': invalid arguments: models: must be one or more RegisteredModel resources")
        names = [m.args.model_name for m in models]
        if len(set(names)) != len(names):
            raise ArgsError(f"AksService '{resource_name}': invalid arguments: models: distinct model names needed, got {names}")
        if not isinstance(image, InferenceImage):
            raise ArgsError(f"AksService '{resource_name}': invalid arguments: image: must be an InferenceImage, got {type(image).__name__}")
        pem = None
        if args.ssl_enabled:
            try:
                pem = tls.read_pair(args.ssl_cert_pem_file or "", args.ssl_key_pem_file or "")
            except tls.TlsError as exc:
                raise ArgsError(f"AksService '{resource_name}': invalid arguments: {exc}") from None
        super().__init__(f"{PACKAGE}:index:AksService", resource_name, None, opts)
        self.args = args
        settings = cluster._settings
        name, ns = args.service_name, args.namespace
        child = pulumi.ResourceOptions(parent=self)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=cluster.provider)
        namespace = cluster.namespace(ns)
        ns_deps = [namespace] if namespace is not None else []
        pull_secret = cluster.pull_secret(ns)  # None unless the registry wants credentials

        keys = ServiceKeys(
            f"{resource_name}-keys",
            {"primary_key_version": args.primary_key_version, "secondary_key_version": args.secondary_key_version},
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["primary_key", "secondary_key"]),
        )
        entries = [m.service_entry() for m in models]
        model_image = RegistryImage(
            f"{resource_name}-image",
            {
                "source_image": image.image_name,
                "source_image_id": image.image_id,
                "repository": f"{cluster.image_registry}/{name}",
                "models": entries,
                "labels": {"mldeploy.managed": "true", "mldeploy.project": settings.project, "mldeploy.stack": settings.stack},
                **cluster.registry_auth(),  # an ACR's credentials, when the stack names one
            },
            child.merge(pulumi.ResourceOptions(depends_on=[m._version for m in models] + [image._image])),
        )
        front_image = cluster.front_image()

        key_list = pulumi.Output.all(keys.primary_key, keys.secondary_key)
        front_files = pulumi.Output.secret(key_list.apply(lambda ks: target.front_config(args, [k for k in ks if k], canary=splits)))
        meta = {"namespace": ns, "labels": target.labels(settings.project, settings.stack, name)}
        secret = k8s.core.v1.Secret(
            f"{resource_name}-front-config",
            metadata={**meta, "name": f"{name}-front"},
            string_data=front_files,
            opts=k8s_opts.merge(pulumi.ResourceOptions(depends_on=ns_deps, delete_before_replace=True)),
        )
        tls_secret = None
        if pem is not None:
            # Only with ssl_enabled. The certificate and key stay secrets, in the state as in the cluster.
            tls_secret = k8s.core.v1.Secret(
                f"{resource_name}-tls",
                metadata={**meta, "name": f"{name}-tls"},
                type="kubernetes.io/tls",
                string_data=pulumi.Output.secret(target.tls_secret_data(*pem)),
                opts=k8s_opts.merge(pulumi.ResourceOptions(depends_on=ns_deps, delete_before_replace=True)),
            )
        # Every new pod answers a sample before it gets traffic: `sample_request`, else the entry script's own.
        sample_config = k8s.core.v1.ConfigMap(
            f"{resource_name}-sample",
            metadata={**meta, "name": f"{name}-sample"},
            data=target.sample_config_data(sample),
            opts=k8s_opts.merge(pulumi.ResourceOptions(depends_on=ns_deps)),
        )
        # Planned versions at preview (as the local target shows them), registered ones at up.
        planned = [pulumi.Output.from_input(e).apply(lambda e: int(e["version"])) for e in entries]
        versions = {n: v.apply(str) for n, v in zip(names, planned)}
        spec = target.deployment_spec(
            args,
            project=settings.project,
            stack=settings.stack,
            image_ref=model_image.image_ref,
            front_image_ref=front_image.image_ref,
            model_versions=versions,
            config_secret=f"{name}-front",
            # A digest of two random 256-bit keys reveals nothing, and a secret here would hide the whole spec from review.
            config_checksum=pulumi.Output.unsecret(front_files.apply(target.checksum)),
            image_pull_secret=target.PULL_SECRET_NAME if pull_secret is not None else None,
            sample_config=f"{name}-sample",
            tls_secret=f"{name}-tls" if tls_secret is not None else None,
            # A digest of the certificate and key rolls the pods when they are renewed; like the keys', it reveals nothing.
            tls_checksum=target.checksum(target.tls_secret_data(*pem)) if pem is not None else None,
            canary=splits,
        )
        object_deps = [secret, *ns_deps, *([pull_secret] if pull_secret is not None else []), sample_config,
                       *([tls_secret] if tls_secret is not None else [])]
        canary_run = None
        if splits:
            # Before the Deployment: a rollback fails up here, and the Deployment keeps the old version.
            canary_run = KubernetesCanary(
                f"{resource_name}-canary",
                {
                    "kubeconfig": cluster.kubeconfig,
                    "namespace": ns,
                    "name": name,
                    "labels": meta["labels"],
                    "rollout": canary,
                    "traffic": held,
                    "mirror_percent": mirror,
                    "spec": spec,
                    "front": args.model_dump(mode="json"),
                    "keys": pulumi.Output.secret(key_list.apply(lambda ks: [k for k in ks if k])),
                    "versions": versions,
                    "timeout_seconds": args.startup_timeout_seconds,
                    "state_dir": settings.state_dir,
                    "project": settings.project,
                    "stack": settings.stack,
                },
                pulumi.ResourceOptions(parent=self, depends_on=object_deps, additional_secret_outputs=["kubeconfig", "keys", "held"]),
            )
        deployment = k8s.apps.v1.Deployment(
            f"{resource_name}-deployment",
            metadata={
                **meta,
                "name": name,
                # Pulumi's await logic fails the rollout after this long, with the pods' state.
                "annotations": {"pulumi.com/timeoutSeconds": str(args.startup_timeout_seconds)},
            },
            spec=spec,
            opts=k8s_opts.merge(pulumi.ResourceOptions(
                depends_on=[*object_deps, *([canary_run] if canary_run is not None else [])],
                # A held split keeps the Deployment on the current version; dropping `traffic` rolls it.
                ignore_changes=["spec"] if holds else None,
                delete_before_replace=True)),
        )
        service = k8s.core.v1.Service(
            f"{resource_name}-service",
            metadata={**meta, "name": name},
            spec=target.service_spec(name),
            opts=k8s_opts.merge(pulumi.ResourceOptions(depends_on=ns_deps, delete_before_replace=True)),
        )
        # pulumi-kubernetes can call an update done before the controller acts on it (providers/targets/kubernetes/rollout.py).
        rollout = Rollout(
            f"{resource_name}-rollout",
            {
                "kubeconfig": cluster.kubeconfig,
                "namespace": ns,
                "name": name,
                "selector": target.selector(name),
                "generation": deployment.metadata.generation,
                "timeout_seconds": args.startup_timeout_seconds,
                # With a canary: its candidate is removed once the Deployment has rolled to the same version.
                # (Always: a held split dropped with no canary left still has a candidate to remove.)
                "candidate": target.canary_name(name),
            },
            pulumi.ResourceOptions(parent=self, depends_on=[deployment], additional_secret_outputs=["kubeconfig"]),
        )
        self.deployment, self.service, self.rollout = deployment, service, rollout
        self.autoscaler: k8s.autoscaling.v2.HorizontalPodAutoscaler | None = None
        self.disruption_budget: k8s.policy.v1.PodDisruptionBudget | None = None
        if args.autoscale:
            self.autoscaler = k8s.autoscaling.v2.HorizontalPodAutoscaler(
                f"{resource_name}-hpa",
                metadata={**meta, "name": name},
                spec=target.hpa_spec(args, name),
                opts=k8s_opts.merge(pulumi.ResourceOptions(depends_on=[deployment], delete_before_replace=True)),
            )
        if target.needs_pdb(args):
            self.disruption_budget = k8s.policy.v1.PodDisruptionBudget(
                f"{resource_name}-pdb",
                metadata={**meta, "name": name},
                spec=target.pdb_spec(name),
                opts=k8s_opts.merge(pulumi.ResourceOptions(depends_on=ns_deps, delete_before_replace=True)),
            )
        self.node_port = service.spec.apply(lambda s: int(s.ports[0].node_port))
        scheme = "https" if args.ssl_enabled else "http"
        # The certificate's name when TLS names one; else where the cluster's NodePorts answer.
        host = pulumi.Output.from_input(args.ssl_cname) if args.ssl_enabled and args.ssl_cname else cluster.node_host
        uris = pulumi.Output.all(self.node_port, host).apply(lambda a: target.uris(a[0], name, a[1], scheme))
        # The URI is known only once the rollout is done, so it is a promise that the service answers.
        self.scoring_uri = pulumi.Output.all(uris, rollout.revision).apply(lambda a: a[0]["scoring_uri"])
        self.swagger_uri = uris.apply(lambda u: u["swagger_uri"])
        self.primary_key = pulumi.Output.secret(keys.primary_key)
        self.secondary_key = pulumi.Output.secret(keys.secondary_key)
        self.model_versions = pulumi.Output.all(*planned).apply(
            lambda vs: {n: int(v) for n, v in zip(names, vs)}
        )
        warning = target.plain_http_warning(args, resource_name, cluster._loopback_only)
        if warning:
            pulumi.log.warn(warning, resource=self)
        self.register_outputs({k: getattr(self, k) for k in OUTPUTS})


AksServiceArgs = args_class(AksService, "The arguments of `AksService` as one object: Azure ML's AksWebservice.deploy_configuration.")
