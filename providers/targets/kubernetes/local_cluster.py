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

ROOT = Path(__file__).resolve().parents[3]
CLUSTER_SH = ROOT / "scripts" / "k8s" / "cluster.sh"
"""In a checkout; an installed package (mldeploy/providers/clients/) has no scripts/ beside it."""
CHECKOUT_ENV = "MLDEPLOY_ROOT"
"""A checkout of the repository whose scripts run the cluster (scripts/env.sh exports it)."""
REGISTRY_ADDRESS = "127.0.0.1:5000"
K8S_VERSION = "1.37.2"  # scripts/env.sh's default


class ClusterStartError(RuntimeError):
    """`cluster.sh up` failed; the message carries the tail of its output."""


class ClusterScriptsMissing(ClusterStartError):
    """The local cluster's scripts are not here (an installed package); the message says what to set."""


def cluster_script() -> Path:
    """scripts/k8s/cluster.sh: of the checkout this module is in, else of the one MLDEPLOY_ROOT names.

    The scripts build the cluster's binaries from Go modules and run them; they belong to
    the repository, not to the installed package, which raises `ClusterScriptsMissing`.
    """
    if CLUSTER_SH.is_file():
        return CLUSTER_SH
    given = os.environ.get(CHECKOUT_ENV)
    if given and (Path(given) / "scripts" / "k8s" / "cluster.sh").is_file():
        return Path(given) / "scripts" / "k8s" / "cluster.sh"
    looked = f"{CHECKOUT_ENV}={given!r} has no scripts/k8s/cluster.sh" if given else f"{CHECKOUT_ENV} is not set"
    raise ClusterScriptsMissing(
        "the local Kubernetes cluster is built and run by the mldeploy repository's scripts/k8s/cluster.sh, "
        f"which the installed package does not include ({looked}). Set {CHECKOUT_ENV} to a checkout of the "
        "repository (its scripts/env.sh does), or attach a cluster of your own with mldeploy:kubeconfig "
        "(AksCluster(kubeconfig=...))"
    )


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
    done = subprocess.run([str(cluster_script()), "status"], capture_output=True, text=True, timeout=60)
    return done.returncode == 0


def ensure_up() -> str:
    """Start the cluster and the registry unless they run (idempotent); progress goes to stderr.

    A first start on a new machine builds the binaries from Go modules (about
    20 min on 2 cores); afterwards `up` takes seconds. Returns the kubeconfig path.
    """
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen([str(cluster_script()), "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
