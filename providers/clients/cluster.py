"""Thin client for the local single-node Kubernetes cluster and its image registry.

Both are run by the project's scripts (scripts/k8s/cluster.sh, registry.sh);
this module only starts them and says where they are. Every address is on
127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "scripts" / "k8s" / "cluster.sh"
REGISTRY_ADDRESS = "127.0.0.1:5000"
K8S_VERSION = "1.37.2"  # scripts/env.sh's default


class ClusterStartError(RuntimeError):
    """`cluster.sh up` failed; the message carries the tail of its output."""


def run_dir() -> Path:
    """Where the running cluster keeps its state (MLDEPLOY_K8S_RUN, as in scripts/env.sh)."""
    if os.environ.get("MLDEPLOY_K8S_RUN"):
        return Path(os.environ["MLDEPLOY_K8S_RUN"])
    cache = os.environ.get("MLDEPLOY_CACHE") or str(Path.home() / ".cache" / "mldeploy")
    return Path(cache) / "kubernetes" / "run"


def kubectl_path() -> str:
    """The kubectl built with the cluster (scripts/k8s/build.sh), never another one on PATH."""
    home = os.environ.get("MLDEPLOY_K8S_HOME")
    if not home:
        cache = os.environ.get("MLDEPLOY_CACHE") or str(Path.home() / ".cache" / "mldeploy")
        home = str(Path(cache) / "kubernetes" / f"v{os.environ.get('K8S_VERSION') or K8S_VERSION}")
    return str(Path(home) / "bin" / "kubectl")


def kubeconfig_path() -> str:
    """The admin kubeconfig (server https://127.0.0.1:6443), written by `cluster.sh up`."""
    return str(run_dir() / "admin.kubeconfig")


def registry_address() -> str:
    """The local registry that stands in for Azure Container Registry (plain HTTP)."""
    return REGISTRY_ADDRESS


def is_up() -> bool:
    """Every component runs and the node is Ready."""
    done = subprocess.run([str(CLUSTER_SH), "status"], capture_output=True, text=True, timeout=60)
    return done.returncode == 0


def ensure_up() -> str:
    """Start the cluster and the registry unless they run (idempotent); progress goes to stderr.

    A first start on a new machine builds the binaries from Go modules (about
    20 min on 2 cores); afterwards `up` takes seconds. Returns the kubeconfig path.
    """
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen([str(CLUSTER_SH), "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise ClusterStartError(f"scripts/k8s/cluster.sh up failed ({rc}):\n" + "".join(tail))
    return kubeconfig_path()
