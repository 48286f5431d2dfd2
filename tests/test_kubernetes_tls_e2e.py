"""A TLS service on the real local cluster (issue 18, item 3), whose pods run as nobody (item 7).

The test makes its own CA and a certificate for 127.0.0.1 and localhost. The
service answers over HTTPS through its NodePort on 127.0.0.1 with that CA only,
and plain HTTP to the same port gets nginx's 400, never the service. The pod is
inspected through kubectl (spec, status, `id` inside each container); no pod or
service address is ever probed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from test_kubernetes_e2e import KUBECTL, kubectl
from test_raw_script_e2e import ROW, raw_project
from tls_certs import make_ca_and_cert

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.k8s]


def test_a_tls_service_answers_https_on_127_0_0_1_and_refuses_plain_http(workdir: Path, engine_stack, k8s_cluster: str) -> None:
    pem = make_ca_and_cert(workdir / "tls")
    ns = f"tls-{workdir.parent.name[-8:].lower().replace('_', '-')}".rstrip("-")
    raw_project(workdir, 2)

    def program() -> None:
        import pulumi

        from mldeploy.components import AksCluster, AksService, InferenceImage, RegisteredModel

        model = RegisteredModel("raw", model_name="raw_model", model_path="raw_model/scale.json")
        image = InferenceImage("raw", entry_script="score.py", source_directory="raw_src", conda_file="sample/env/myenv.yml")
        cluster = AksCluster("aks", cluster_purpose="DevTest")
        svc = AksService("tlssvc", cluster=cluster, models=[model], image=image, namespace=ns, num_replicas=1,
                         initial_delay_seconds=30, startup_timeout_seconds=180, ssl_enabled=True,
                         ssl_cert_pem_file=str(pem["cert"]), ssl_key_pem_file=str(pem["key"]))
        pulumi.export("uri", svc.scoring_uri)
        pulumi.export("key", svc.primary_key)

    st = engine_stack(program)
    out = {k: v.value for k, v in st.up().outputs.items()}
    uri, key = out["uri"], out["key"]
    assert uri.startswith("https://127.0.0.1:"), uri
    auth = {"Authorization": f"Bearer {key}"}

    r = requests.post(uri, json={"data": [ROW]}, headers=auth, timeout=30, verify=str(pem["ca"]))
    assert r.status_code == 200 and r.json() == [110.0], r.text
    assert requests.post(uri, json={"data": [ROW]}, timeout=30, verify=str(pem["ca"])).status_code == 401
    # Not a certificate any public CA vouches for: the default trust store refuses it.
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(uri, json={"data": [ROW]}, headers=auth, timeout=30)
    plain = requests.post("http://" + uri[len("https://"):], json={"data": [ROW]}, headers=auth, timeout=30)
    assert plain.status_code == 400 and "110" not in plain.text, (plain.status_code, plain.text[:300])

    # The pair is a kubernetes.io/tls Secret mounted into the front end only.
    secret = kubectl(k8s_cluster, "get", "secret", "tlssvc-tls", "-n", ns)
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key"}
    pods = kubectl(k8s_cluster, "get", "pods", "-n", ns, "-l", "mldeploy.azureml.net/service=tlssvc")["items"]
    (pod,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    scoring, front = pod["spec"]["containers"]
    assert {"name": "front-tls", "mountPath": "/etc/mldeploy-fe-tls", "readOnly": True} in front["volumeMounts"]
    assert all(m["name"] != "front-tls" for m in scoring["volumeMounts"])
    assert front["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"

    # Item 7: the pod's spec and its running containers, as the kubelet reports them.
    assert pod["spec"]["securityContext"]["runAsUser"] == 65534 and pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["spec"]["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    statuses = {cs["name"]: cs for cs in pod["status"]["containerStatuses"]}
    assert all(cs["ready"] and "running" in cs["state"] and cs["restartCount"] == 0 for cs in statuses.values()), statuses
    for name in ("scoring", "front"):
        ident = subprocess.run([KUBECTL, "--kubeconfig", k8s_cluster, "exec", "-n", ns, pod["metadata"]["name"], "-c", name,
                                "--", "id", "-u"], capture_output=True, text=True, timeout=60)
        assert ident.returncode == 0 and ident.stdout.strip() == "65534", (name, ident.stdout, ident.stderr)
        # The root is read-only; /tmp is the pod's own emptyDir.
        touch = subprocess.run([KUBECTL, "--kubeconfig", k8s_cluster, "exec", "-n", ns, pod["metadata"]["name"], "-c", name,
                                "--", "sh", "-c", "touch /probe-file 2>&1; echo rc=$?"], capture_output=True, text=True, timeout=60)
        assert "rc=0" not in touch.stdout and "Read-only file system" in touch.stdout, (name, touch.stdout)
