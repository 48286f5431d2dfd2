"""The seed's Ridge regression, registered, built, deployed and exported.

`dev` deploys it on the local target (Docker); `prod` on the Kubernetes
target (the local single-node cluster unless the stack names a kubeconfig).
Only wiring lives here; each component has its own module under components/.
"""

import pulumi

from mldeploy.components import (
    AksCluster,
    AksService,
    ContainerInstanceService,
    EdgeDevice,
    EdgeModule,
    InferenceImage,
    RegisteredModel,
)

config = pulumi.Config()
target = config.get("target") or "local"
cpu_cores = config.get_float("cpuCores")
memory_gb = config.get_float("memoryGb")

model = RegisteredModel(
    "ridge",
    model_name="sklearn_regression_model",
    model_path=config.get("modelPath") or "sample/models/sklearn_regression_model.pkl",
    tags={"area": "demo", "type": "regression"},
    description="Ridge regression over 10 features",
)
image = InferenceImage(
    "scoring",
    entry_script="score.py",
    source_directory="sample/src",
    conda_file="sample/env/myenv.yml",
)
if target == "kubernetes":
    replicas = config.get("numReplicas")
    cluster = AksCluster(
        "aks",
        cluster_purpose=config.get("clusterPurpose") or "FastProd",
        kubeconfig=config.get_secret("kubeconfig") if config.get("kubeconfig") else None,
        # `azure`: an AKS managed cluster through ARM (mldeploy:azure*), or the one at aksResourceId.
        target=config.get("clusterTarget") or "local",
        resource_id=config.get("aksResourceId") or None,
        agent_count=int(config.get("agentCount")) if config.get("agentCount") else None,
        vm_size=config.get("vmSize") or "Standard_D3_v2",
    )
    service = AksService(
        "aksservice",
        cluster=cluster,
        models=[model],
        image=image,
        num_replicas=int(replicas) if replicas else None,
        cpu_cores=0.1 if cpu_cores is None else cpu_cores,
        memory_gb=0.5 if memory_gb is None else memory_gb,
        auth_enabled=True,
    )
    pulumi.export("kubernetes_version", cluster.kubernetes_version)
elif target == "iotedge":
    # By default this machine acts as the edge device; the scoring server is published on 127.0.0.1 without a key.
    # edgeBackend `iothub`: the manifest goes through IoT Hub (iotHubHost, secret iotHubPolicyKey), to one device
    # or, with edgeTargetCondition (and edgePriority), as an at-scale deployment to every device it selects.
    backend = config.get("edgeBackend") or "local"
    hub = {} if backend == "local" else {
        "hub_host": config.require("iotHubHost"),
        "policy_name": config.get("iotHubPolicyName") or "iothubowner",
        "policy_key": config.require_secret("iotHubPolicyKey"),
        "target_condition": config.get("edgeTargetCondition"),
        "priority": config.get_int("edgePriority"),
    }
    device = EdgeDevice(config.get("edgeDevice") or "local-device", backend=backend, **hub)
    service = EdgeModule("edge", models=[model], image=image, device=device, module_name="scorer")
    pulumi.export("module_version", service.module_version)
    pulumi.export("image_ref", service.image_ref)
    if config.get("edgeTargetCondition"):
        pulumi.export("configuration_id", service.configuration_id)
else:
    service = ContainerInstanceService(
        "aciservice",
        models=[model],
        image=image,
        cpu_cores=1 if cpu_cores is None else cpu_cores,
        memory_gb=1 if memory_gb is None else memory_gb,
        auth_enabled=True,
        warm_standby=config.get_bool("warmStandby") or None,
    )

pulumi.export("model_name", model.model_name)
pulumi.export("model_version", model.version)
pulumi.export("image_name", image.image_name)
pulumi.export("scoring_uri", service.scoring_uri)
pulumi.export("swagger_uri", service.swagger_uri)
if target != "iotedge":  # an edge module has no key, as in Azure ML
    pulumi.export("primary_key", service.primary_key)
