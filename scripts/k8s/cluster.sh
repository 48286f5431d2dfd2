#!/usr/bin/env bash
# The project's single-node Kubernetes cluster on this machine, built from Go
# modules (scripts/k8s/build.sh) plus Debian's containerd/runc/CNI plugins.
# Everything lives under $MLDEPLOY_K8S_RUN; every listener is on 127.0.0.1.
#
#   scripts/k8s/cluster.sh up       # idempotent; waits for the node to be Ready
#   scripts/k8s/cluster.sh down     # stops it and undoes every host change
#   scripts/k8s/cluster.sh status   # exit 0 when up and Ready
#
# Layout: own containerd (never Docker's), etcd 127.0.0.1:23790, apiserver
# 127.0.0.1:6443, controller-manager, scheduler, kubelet (127.0.0.1:10250),
# kube-proxy (iptables; NodePorts on 127.0.0.0/8 only), CNI bridge cni0 with
# host-local 10.244.0.0/24, services 10.96.0.0/16. Images come from the local
# registry on 127.0.0.1:5000 (scripts/k8s/registry.sh, read-only there), pulled over plain HTTP.
# Cluster objects (in etcd) survive down/up; `down` deletes the pods so that
# their sandboxes, veths and mounts go, and the controllers recreate them on up.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../env.sh"
log() { printf '[cluster] %s\n' "$*" >&2; }
source "$HERE/lib.sh"

RUN="$MLDEPLOY_K8S_RUN"
BIN="$MLDEPLOY_K8S_HOME/bin"
RT="${MLDEPLOY_K8S_RUNTIME_DIR:-/run/mldeploy-k8s}"   # sockets, runc and containerd state (tmpfs)
NODE="${MLDEPLOY_K8S_NODE:-mldeploy-node}"
SOCK="$RT/containerd/containerd.sock"
PKI="$RUN/pki" CONF="$RUN/conf" PIDS="$RUN/pids" LOGS="$RUN/logs" HOST="$RUN/host"
KUBECONFIG_ADMIN="$RUN/admin.kubeconfig"
REGISTRY="127.0.0.1:5000"
PAUSE_IMAGE="$REGISTRY/mldeploy/pause:3.10"
SECRETS_KEY_NAME="key1"   # in the EncryptionConfiguration; stored Secrets start k8s:enc:secretbox:v1:key1:
POD_CIDR="10.244.0.0/24" SERVICE_CIDR="10.96.0.0/16" SERVICE_IP="10.96.0.1"
# The apiserver must advertise a non-loopback address (the default Service
# "kubernetes" points there); it listens on 127.0.0.1 only, so nothing answers
# at this address and in-cluster clients cannot reach the API (none needs to).
ADVERTISE="192.0.2.2"
HOSTS_LINE="127.0.0.1 $NODE # added by mldeploy scripts/k8s/cluster.sh"
COMPONENTS=(containerd etcd kube-apiserver kubelet kube-proxy kube-scheduler kube-controller-manager)
PACKAGES=(containerd runc containernetworking-plugins conntrack socat iptables nftables nfacct openssl curl docker-registry)
# Sysctls the kubelet, kube-proxy and the CNI bridge may change: recorded before
# start, restored by down.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
  net.ipv4.ip_forward net.ipv6.conf.all.forwarding net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait
  net.netfilter.nf_conntrack_tcp_be_liberal)
# Paths outside RUN that the kubelet/containerd/libcni write to despite their
# settings: removed by down when they did not exist before up.
HOST_PATHS=(/var/lib/kubelet /var/lib/cni /var/log/containers /var/log/pods /etc/cni /opt/cni
  /var/lib/containerd /run/netns /etc/kubernetes)

kubectl_() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" --request-timeout=10s "$@"; }
ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }
bin_of() { case "$1" in containerd) echo /usr/bin/containerd ;; *) echo "$BIN/$1" ;; esac; }
running() { pid_alive "$PIDS/$1.pid" "$(bin_of "$1")"; }
any_running() { local c; for c in "${COMPONENTS[@]}"; do running "$c" && return 0; done; return 1; }
# node_ready [SINCE] : the node's Ready condition is True (and, given SINCE, an
# RFC 3339 UTC time, was posted at or after it: etcd keeps the last run's).
node_ready() {
  local out
  out="$(kubectl_ get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}' 2>/dev/null)" || return 1
  [ "${out%% *}" = True ] || return 1
  [ -z "${1:-}" ] || [[ ! "${out#* }" < "$1" ]]
}
kubelet_healthy() { [ "$(curl -fs --max-time 2 http://127.0.0.1:10248/healthz)" = ok ]; }
t0=$SECONDS
since() { echo "$((SECONDS - t0))s"; }

# ---------------------------------------------------------------- prerequisites
prereqs() {
  [ "$(id -u)" = 0 ] || { log "the cluster needs root (network namespaces, iptables, mounts)"; exit 1; }
  ensure_packages "${PACKAGES[@]}"
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$BIN/$b" ] || rm -f "$MLDEPLOY_K8S_HOME/.complete"
  done
  if [ ! -f "$MLDEPLOY_K8S_HOME/.complete" ]; then
    log "Kubernetes v$K8S_VERSION binaries missing: building them (about 10 min on 2 cores, once)"
    "$HERE/build.sh" cluster
  fi
}

# ---------------------------------------------------------------- certificates
# mkcert NAME "SUBJECT" EXTENDED_KEY_USAGE [SAN] [CA] : a key and a certificate
# signed by CA (default: the cluster CA, "ca").
mkcert() {
  local name="$1" subj="$2" eku="$3" san="${4:-}" ca="${5:-ca}" rec
  rec="$subj $san"; [ "$ca" = ca ] || rec="$rec ca=$ca"
  if [ -s "$PKI/$name.crt" ] && [ "$(cat "$PKI/$name.subject" 2>/dev/null)" = "$rec" ]; then return 0; fi
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  {
    echo "[v3]"
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -extfile "$PKI/$name.ext" -extensions v3 -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
  printf '%s\n' "$rec" >"$PKI/$name.subject"
}

# mkca NAME CN : a self-signed CA, made once.
mkca() {
  local name="$1" cn="$2"
  [ -s "$PKI/$name.crt" ] && return 0
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  printf '[req]\ndistinguished_name=dn\n[dn]\n[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\n' >"$PKI/$name.cnf"
  openssl req -x509 -new -key "$PKI/$name.key" -subj "/CN=$cn" -days 3650 \
    -config "$PKI/$name.cnf" -extensions v3_ca -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.cnf"
}

certs() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  [ -s "$PKI/ca.crt" ] || log "making the cluster CA and certificates with openssl"
  mkca ca mldeploy-kubernetes-ca
  # etcd has a CA of its own, which signs nothing but etcd's certificates and
  # the API server's client certificate: no other certificate of the cluster
  # (nor one the controller-manager signs for a CSR) opens etcd.
  mkca etcd-ca mldeploy-etcd-ca
  # The server certificate is also a client one: etcd's HTTP gateway calls its
  # own gRPC server with it.
  mkcert etcd-server "/CN=mldeploy-etcd" serverAuth,clientAuth "DNS:localhost,IP:127.0.0.1" etcd-ca
  mkcert etcd-peer "/CN=mldeploy-etcd-peer" serverAuth,clientAuth "DNS:localhost,IP:127.0.0.1" etcd-ca
  mkcert apiserver-etcd-client "/CN=kube-apiserver-etcd-client" clientAuth "" etcd-ca
  if [ ! -s "$PKI/sa.key" ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/sa.key" 2>/dev/null
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  # The key that seals Secrets at rest, made once: without it no Secret in etcd reads.
  [ -s "$PKI/secrets-encryption.key" ] || ( umask 077; head -c 32 /dev/urandom | base64 -w0 >"$PKI/secrets-encryption.key" )
  mkcert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$SERVICE_IP,IP:$ADVERTISE"
  mkcert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  mkcert admin "/O=system:masters/CN=mldeploy-admin" clientAuth
  mkcert controller-manager "/CN=system:kube-controller-manager" clientAuth
  mkcert scheduler "/CN=system:kube-scheduler" clientAuth
  mkcert kube-proxy "/CN=system:kube-proxy" clientAuth
  mkcert kubelet "/O=system:nodes/CN=system:node:$NODE" clientAuth
  chmod 600 "$PKI"/*.key
}

# put FILE [COMPONENT] < CONTENT : write FILE (mode 600) only when its content
# changes (kube-proxy exits on any write to its config), noting COMPONENT so
# that a running one is restarted.
CHANGED=()
put() {
  local file="$1" comp="${2:-}"
  ( umask 077; cat >"$file.new" )
  if [ -f "$file" ] && cmp -s "$file" "$file.new"; then rm -f "$file.new"; return 0; fi
  mv "$file.new" "$file"
  if [ -n "$comp" ]; then CHANGED+=("$comp"); fi
  return 0
}

# kubeconfig FILE USER CERTNAME [COMPONENT]
kubeconfig() {
  local file="$1" user="$2" cert="$3" comp="${4:-}"
  put "$file" "$comp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mldeploy-local
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: mldeploy-local
  context:
    cluster: mldeploy-local
    user: $user
current-context: mldeploy-local
EOF
}

# ---------------------------------------------------------------- configuration
configs() {
  mkdir -p "$CONF" "$RUN/cni/net.d" "$RUN/cni/ipam" "$RUN/containerd" "$RUN/etcd" "$RUN/kubelet" "$RUN/pod-logs" \
    "$CONF/certs.d/$REGISTRY"
  chmod 700 "$RUN/etcd"
  # Secrets at rest: written sealed with secretbox (XSalsa20-Poly1305); identity
  # comes second so that Secrets stored in plain before still read (up rewrites
  # them once, rewrite_secrets).
  put "$CONF/encryption.yaml" kube-apiserver <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - secretbox:
          keys:
            - name: $SECRETS_KEY_NAME
              secret: $(cat "$PKI/secrets-encryption.key")
      - identity: {}
EOF
  kubeconfig "$KUBECONFIG_ADMIN" mldeploy-admin admin
  kubeconfig "$CONF/controller-manager.kubeconfig" system:kube-controller-manager controller-manager kube-controller-manager
  kubeconfig "$CONF/scheduler.kubeconfig" system:kube-scheduler scheduler kube-scheduler
  kubeconfig "$CONF/kube-proxy.kubeconfig" system:kube-proxy kube-proxy kube-proxy
  kubeconfig "$CONF/kubelet.kubeconfig" "system:node:$NODE" kubelet kubelet

  put "$CONF/containerd.toml" containerd <<EOF
# Written by scripts/k8s/cluster.sh: the cluster's own containerd, apart from Docker's.
version = 2
root = "$RUN/containerd/root"
state = "$RT/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # By digest (build_pause): containerd verifies the content it runs as every pod's sandbox.
  sandbox_image = "$PAUSE_PINNED"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Root here lacks CAP_SYS_RESOURCE: the kubelet's -998 for sandboxes cannot
  # be applied, so clamp every score to containerd's own (0).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RT/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CONF/certs.d"
EOF
  # The local registry (Azure Container Registry's stand-in): plain HTTP on loopback.
  put "$CONF/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
  # One bridge, host-local IPs; no ipMasq (pods need no egress), so the plugin
  # adds no iptables rule. IPAM state stays under RUN.
  put "$RUN/cni/net.d/10-mldeploy.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "mldeploy",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  put "$CONF/kubelet.yaml" kubelet <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
# cgroup v1 host: Kubernetes >= 1.35 refuses it unless told otherwise.
failCgroupV1: false
# No CAP_SYS_RESOURCE: the kubelet cannot lower its own oom_score_adj.
oomScoreAdj: 0
failSwapOn: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podLogsDir: $RUN/pod-logs
serializeImagePulls: false
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
evictionHard:
  memory.available: 100Mi
  nodefs.available: 5%
  imagefs.available: 5%
  nodefs.inodesFree: 5%
maxPods: 110
EOF
  put "$CONF/kube-proxy.yaml" kube-proxy <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $CONF/kube-proxy.kubeconfig
hostnameOverride: $NODE
mode: iptables
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: $POD_CIDR
# NodePorts answer on loopback only, never on eth0 or docker0.
nodePortAddresses: ["127.0.0.0/8"]
iptables:
  localhostNodePorts: true
  masqueradeAll: false
# Leave the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
oomScoreAdj: 0
EOF
}

# ---------------------------------------------------------------- host state
# Taken once, before the first component starts; restored and removed by down.
snapshot_host() {
  [ -f "$HOST/.complete" ] && return 0
  rm -rf "$HOST"; mkdir -p "$HOST"
  local k v
  for k in "${SYSCTLS[@]}"; do
    v="$(sysctl -n "$k" 2>/dev/null)" || continue
    printf '%s=%s\n' "$k" "$v"
  done >"$HOST/sysctl"
  nft list tables 2>/dev/null | sort >"$HOST/nft-tables"
  nfacct_names >"$HOST/nfacct"
  for k in "${HOST_PATHS[@]}"; do [ -e "$k" ] && echo "$k"; done >"$HOST/paths"
  ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null >"$HOST/cgroups" || true
  ip -o link show cni0 >/dev/null 2>&1 && touch "$HOST/cni0-existed"
  touch "$HOST/.complete"
}

# Names of the kernel's nfacct counters (kube-proxy makes some for its metrics).
nfacct_names() { nfacct list 2>/dev/null | sed -n 's/.*} = \(.*\);$/\1/p' | sort; }

hosts_entry() {
  # The apiserver reaches the kubelet by the node's name: it must resolve to
  # 127.0.0.1, where the kubelet listens.
  if getent ahostsv4 "$NODE" 2>/dev/null | awk '{print $1}' | head -1 | grep -qx 127.0.0.1; then return 0; fi
  log "mapping $NODE to 127.0.0.1 in /etc/hosts"
  printf '%s\n' "$HOSTS_LINE" >>/etc/hosts
  touch "$HOST/hosts-added"
}

# ---------------------------------------------------------------- pause image
pause_tar() {
  local key
  key="$(cat "$HERE/pause/pause.go" "$HERE/pause/Dockerfile" | sha256sum | cut -c1-12)"
  echo "$MLDEPLOY_K8S_HOME/images/pause-$key.tar"
}

registry_has_manifest() {
  curl -fs --max-time 5 -o /dev/null -I -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REGISTRY/v2/$1/manifests/$2"
}

# build_pause : the pause image, built once and pushed to the registry; the
# digest of the pushed manifest is recorded beside the tar and is what
# containerd runs sandboxes from (PAUSE_PINNED), so a tag moved in the registry
# changes nothing. Pushed again (from the tar) when the registry lost it.
PAUSE_PINNED=""
# push_with_credentials IMAGE : the registry's pull listener ($REGISTRY) is read-only, so IMAGE
# goes to its write listener with the project's credentials (scripts/k8s/registry.sh), logged
# in under a throwaway DOCKER_CONFIG so the password is never left in ~/.docker.
WRITE_REGISTRY=""
push_with_credentials() {
  local creds="$MLDEPLOY_CACHE/registry/credentials.json" cfg target user rc=0
  read -r WRITE_REGISTRY user < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["address"], d["username"])' "$creds")
  target="${1/#$REGISTRY/$WRITE_REGISTRY}"
  cfg="$(mktemp -d)"
  docker tag "$1" "$target"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["password"])' "$creds" \
    | DOCKER_CONFIG="$cfg" docker login -u "$user" --password-stdin "$WRITE_REGISTRY" >/dev/null 2>&1 || rc=1
  [ "$rc" = 0 ] && { DOCKER_CONFIG="$cfg" docker push -q "$target" >/dev/null || rc=1; }
  rm -rf "$cfg"
  [ "$rc" = 0 ] || { log "could not push $1 to $WRITE_REGISTRY (with $creds)"; exit 1; }
}
build_pause() {
  local tar digest_file digest
  tar="$(pause_tar)"; digest_file="${tar%.tar}.digest"
  if [ -s "$tar" ] && [ -s "$digest_file" ] && registry_has_manifest mldeploy/pause "$(cat "$digest_file")"; then
    PAUSE_PINNED="$REGISTRY/mldeploy/pause@$(cat "$digest_file")"
    return 0
  fi
  docker info >/dev/null 2>&1 || "$HERE/../docker.sh"
  if [ -s "$tar" ]; then
    log "pushing the pause image from $tar to $REGISTRY (to pin its digest)"
    docker load -q -i "$tar" >/dev/null
  else
    log "building the pause image (static Go binary FROM scratch)"
    local work; work="$(mktemp -d)"
    cp "$HERE/pause/Dockerfile" "$work/"
    ( cd "$HERE/pause" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" -o "$work/pause" . )
    DOCKER_BUILDKIT=0 docker build -q -t "$PAUSE_IMAGE" "$work" >/dev/null
    rm -rf "$work"
    mkdir -p "$(dirname "$tar")"
    docker save -o "$tar.tmp" "$PAUSE_IMAGE"
    mv "$tar.tmp" "$tar"
  fi
  push_with_credentials "$PAUSE_IMAGE"
  digest="$(docker inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$PAUSE_IMAGE" | sed -n "s|^$WRITE_REGISTRY/mldeploy/pause@||p" | head -1)"
  docker rmi "$PAUSE_IMAGE" "${PAUSE_IMAGE/#$REGISTRY/$WRITE_REGISTRY}" >/dev/null 2>&1 || true
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || { log "no registry digest for $PAUSE_IMAGE after its push"; exit 1; }
  printf '%s\n' "$digest" >"$digest_file"
  PAUSE_PINNED="$REGISTRY/mldeploy/pause@$digest"
  log "pause image pinned: $PAUSE_PINNED"
}

# import_image TAR : load a `docker save` archive into the cluster's containerd
# (the fallback for images that are not in the registry).
import_image() {
  ctr_ images import "$1" >/dev/null
}

# ---------------------------------------------------------------- start
rotate() { local f="$LOGS/$1.log"; [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 20000000 ] && mv -f "$f" "$f.old"; return 0; }

start() {
  local name="$1"; shift
  if running "$name"; then log "$name already running (pid $(cat "$PIDS/$name.pid"))"; return 0; fi
  rotate "$name"
  start_bg "$PIDS/$name.pid" "$LOGS/$name.log" "$(bin_of "$name")" "$@"
  log "started $name (pid $(cat "$PIDS/$name.pid")) [$(since)]"
}

failed() {
  log "$1 did not come up; last lines of $LOGS/$2.log:"
  tail -25 "$LOGS/$2.log" >&2 || true
  log "what did start keeps running for a look; scripts/k8s/cluster.sh down stops it"
  exit 1
}

api_ready() { [ "$(kubectl_ get --raw /readyz 2>/dev/null)" = ok ]; }
# etcd's metrics listener answers /health without a client certificate (and serves no keys).
etcd_ready() { curl -fs --max-time 2 http://127.0.0.1:23810/health | grep -q '"health":"true"'; }

# has_flag COMPONENT FLAG : the running COMPONENT was started with FLAG (a prefix of one argument).
has_flag() { tr '\0' '\n' <"/proc/$(cat "$PIDS/$1.pid" 2>/dev/null)/cmdline" 2>/dev/null | grep -q -- "^$2"; }
# stale COMPONENT : it runs with the flags of an earlier cluster.sh (etcd in
# plain HTTP, an API server without encryption at rest or allowing privileged
# pods): up restarts it, so an old cluster is never left open.
stale() {
  case "$1" in
    etcd) running etcd && ! has_flag etcd --client-cert-auth ;;
    kube-apiserver) running kube-apiserver && { ! has_flag kube-apiserver --encryption-provider-config= ||
      ! has_flag kube-apiserver --allow-privileged=false || ! has_flag kube-apiserver --etcd-certfile=; } ;;
    *) return 1 ;;
  esac
}

# rewrite_secrets : Secrets stored in plain before encryption at rest are
# rewritten once through the API server, which stores them sealed. Their older
# plain revisions stay in etcd's history until etcd compacts it and rotates its WAL.
rewrite_secrets() {
  local mark="$CONF/secrets-rewritten" want="secretbox:$SECRETS_KEY_NAME" n
  [ "$(cat "$mark" 2>/dev/null)" = "$want" ] && return 0
  n="$(kubectl_ get secrets -A --no-headers 2>/dev/null | wc -l)" || n=0
  if [ "$n" -gt 0 ]; then
    log "rewriting $n Secret(s) so that etcd holds them encrypted"
    if ! kubectl_ get secrets -A -o json | kubectl_ replace -f - >/dev/null; then
      log "could not rewrite every Secret (one changed meanwhile?): tried again at the next up"
      return 0
    fi
  fi
  printf '%s\n' "$want" >"$mark"
}

# allow_pods : pods reach each other across cni0 (a canary's front ends send the candidate its share). With
# bridge-nf-call-iptables on, bridged packets pass the FORWARD chain, whose policy Docker sets to DROP, and
# no rule accepted pod-to-pod traffic: connections timed out. One chain of ours, MLDEPLOY-PODS, accepts
# packets between pod addresses on the bridge; down removes it with kube-proxy's chains (clean_iptables).
allow_pods() {
  iptables -w -N MLDEPLOY-PODS 2>/dev/null || true
  iptables -w -C MLDEPLOY-PODS -s "$POD_CIDR" -d "$POD_CIDR" -j ACCEPT 2>/dev/null ||
    iptables -w -A MLDEPLOY-PODS -s "$POD_CIDR" -d "$POD_CIDR" -j ACCEPT
  iptables -w -C FORWARD -i cni0 -o cni0 -j MLDEPLOY-PODS 2>/dev/null ||
    iptables -w -I FORWARD 1 -i cni0 -o cni0 -j MLDEPLOY-PODS
}

up() {
  prereqs
  "$HERE/registry.sh" up
  if running containerd && running etcd && running kube-apiserver && running kube-controller-manager \
     && running kube-scheduler && running kubelet && running kube-proxy && kubelet_healthy && node_ready \
     && ! stale etcd && ! stale kube-apiserver; then
    allow_pods
    log "already up: node $NODE Ready; kubeconfig $KUBECONFIG_ADMIN"
    return 0
  fi
  t0=$SECONDS
  local started; started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  log "starting Kubernetes v$K8S_VERSION in $RUN"
  mkdir -p "$RUN" "$PIDS" "$LOGS"
  any_running || snapshot_host
  allow_pods
  certs
  build_pause
  configs
  local c
  for c in "${CHANGED[@]}"; do
    if running "$c"; then
      log "the configuration of $c changed: restarting it"
      stop_pid "$PIDS/$c.pid" "$c" "$(bin_of "$c")"
    fi
  done
  # The API server first: it hangs on shutdown when etcd goes before it.
  for c in kube-apiserver etcd; do
    if stale "$c"; then
      log "$c runs with the flags of an earlier cluster.sh: restarting it"
      stop_pid "$PIDS/$c.pid" "$c" "$(bin_of "$c")"
    fi
  done
  hosts_entry
  mkdir -p "$RT"

  start containerd --config "$CONF/containerd.toml"
  wait_until 20 containerd ctr_ version || failed containerd containerd
  if ! ctr_ images ls -q "name==$PAUSE_PINNED" | grep -q .; then
    log "pulling the pause image $PAUSE_PINNED into containerd"
    ctr_ images pull --hosts-dir "$CONF/certs.d" "$PAUSE_PINNED" >/dev/null || failed "the pause image pull" containerd
  fi

  # TLS on both listeners, and a client certificate of etcd's own CA required:
  # the API server holds the only client one (apiserver-etcd-client).
  start etcd --name mldeploy --data-dir "$RUN/etcd" \
    --listen-client-urls https://127.0.0.1:23790 --advertise-client-urls https://127.0.0.1:23790 \
    --cert-file "$PKI/etcd-server.crt" --key-file "$PKI/etcd-server.key" \
    --client-cert-auth --trusted-ca-file "$PKI/etcd-ca.crt" \
    --listen-peer-urls https://127.0.0.1:23800 --initial-advertise-peer-urls https://127.0.0.1:23800 \
    --peer-cert-file "$PKI/etcd-peer.crt" --peer-key-file "$PKI/etcd-peer.key" \
    --peer-client-cert-auth --peer-trusted-ca-file "$PKI/etcd-ca.crt" \
    --initial-cluster mldeploy=https://127.0.0.1:23800 --listen-metrics-urls http://127.0.0.1:23810 \
    --log-level warn
  wait_until 30 etcd etcd_ready || failed etcd etcd

  start kube-apiserver --etcd-servers=https://127.0.0.1:23790 \
    --etcd-cafile="$PKI/etcd-ca.crt" --etcd-certfile="$PKI/apiserver-etcd-client.crt" --etcd-keyfile="$PKI/apiserver-etcd-client.key" \
    --encryption-provider-config="$CONF/encryption.yaml" \
    --bind-address=127.0.0.1 --secure-port=6443 --advertise-address="$ADVERTISE" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=Hostname,InternalIP \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=false --profiling=false
  log "waiting for the API server on https://127.0.0.1:6443"
  wait_until 60 "the API server" api_ready || failed kube-apiserver kube-apiserver
  rewrite_secrets

  # A kubelet started now must post a fresh status (etcd keeps the last run's).
  local fresh_since=""; running kubelet || fresh_since="$started"
  start kubelet --config="$CONF/kubelet.yaml" --kubeconfig="$CONF/kubelet.kubeconfig" \
    --root-dir="$RUN/kubelet" --cert-dir="$RUN/kubelet/pki" --hostname-override="$NODE"
  start kube-proxy --config="$CONF/kube-proxy.yaml"
  start kube-scheduler --kubeconfig="$CONF/scheduler.kubeconfig" \
    --authentication-kubeconfig="$CONF/scheduler.kubeconfig" --authorization-kubeconfig="$CONF/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false
  start kube-controller-manager --kubeconfig="$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CONF/controller-manager.kubeconfig" --authorization-kubeconfig="$CONF/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
    --allocate-node-cidrs=false

  log "waiting for node $NODE to be Ready"
  local end=$((SECONDS + 90)) c
  until node_ready "$fresh_since"; do
    for c in "${COMPONENTS[@]}"; do running "$c" || failed "$c" "$c"; done
    [ "$SECONDS" -ge "$end" ] && failed "node $NODE (not Ready)" kubelet
    sleep 0.5
  done
  log "node $NODE Ready after $(since); kubeconfig: $KUBECONFIG_ADMIN"
}

# ---------------------------------------------------------------- stop
drain_pods() {
  # The controllers are stopped: pods deleted now stay deleted until up, and
  # the kubelet tears down their sandboxes (veths, netns, mounts) first.
  local n
  n="$(kubectl_ get pods -A --no-headers 2>/dev/null | wc -l)" || n=0
  [ "$n" -gt 0 ] || return 0
  log "deleting $n pod(s) so the kubelet tears their sandboxes down"
  kubectl_ delete pods --all --all-namespaces --grace-period=2 --wait=true --timeout=60s >/dev/null 2>&1 ||
    log "some pods were not deleted in time; removing their containers directly"
}

# Whatever the kubelet left: kill our containers, then unmount and remove.
force_cleanup() {
  local ids id
  if running containerd; then
    ids="$(ctr_ tasks ls -q 2>/dev/null || true)"
    for id in $ids; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $ids; do
      for _ in 1 2 3 4 5 6 7 8 9 10; do ctr_ tasks delete "$id" >/dev/null 2>&1 && break; sleep 0.3; done
    done
  fi
}

# Shims of our containerd outlive it by design: stop any that are left.
kill_shims() {
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK" || true); do
    log "killing leftover shim $pid"
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
}

unmount_ours() {
  local m
  # Deepest first.
  for m in $(awk '{print $2}' /proc/mounts | grep -E "^($RUN|$RT|/run/netns|/var/lib/kubelet)(/|$)" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
}

clean_iptables() {
  local ipt table out
  for ipt in iptables ip6tables; do
    for table in filter nat mangle raw; do
      out="$("$ipt-save" -t "$table" 2>/dev/null)" || continue
      grep -qE '(KUBE|MLDEPLOY)-' <<<"$out" || continue
      {
        echo "*$table"
        # rules in other chains that jump to ours (kube-proxy's, and allow_pods'), then our chains
        grep -E '^-A [^ ]+ .*-j (KUBE|MLDEPLOY)-' <<<"$out" | grep -vE '^-A (KUBE|MLDEPLOY)-' | sed 's/^-A /-D /'
        grep -oE '^:(KUBE|MLDEPLOY)-[^ ]+' <<<"$out" | sed 's/^:/-F /'
        grep -oE '^:(KUBE|MLDEPLOY)-[^ ]+' <<<"$out" | sed 's/^:/-X /'
        echo COMMIT
      } | "$ipt-restore" --noflush || log "could not remove KUBE-*/MLDEPLOY-* rules from $ipt $table"
    done
  done
  # nfacct counters kube-proxy created (only deletable once no rule uses them).
  local name
  for name in $(nfacct_names | grep -xE 'localhost_nps_accepted_pkts|ct_state_invalid_dropped_pkts'); do
    grep -qxF "$name" "$HOST/nfacct" 2>/dev/null && continue
    nfacct del "$name" >/dev/null 2>&1 && log "removed nfacct counter $name" || log "could not remove nfacct counter $name"
  done
  # nft tables that iptables-nft created for us, if they were absent before and hold no rule now.
  local fam tbl
  while read -r _ fam tbl; do
    grep -qx "table $fam $tbl" "$HOST/nft-tables" 2>/dev/null && continue
    case "$fam" in ip) ipt=iptables ;; ip6) ipt=ip6tables ;; *) continue ;; esac
    if [ -z "$("$ipt" -t "$tbl" -S 2>/dev/null | grep -v '^-P ')" ]; then
      nft delete table "$fam" "$tbl" 2>/dev/null && log "removed nft table $fam $tbl"
    else
      log "nft table $fam $tbl was created while the cluster ran but holds rules of others: left"
    fi
  done < <(nft list tables 2>/dev/null || true)
}

restore_host() {
  # sysctls
  local kv k v now
  if [ -f "$HOST/sysctl" ]; then
    while IFS= read -r kv; do
      k="${kv%%=*}"; v="${kv#*=}"
      now="$(sysctl -n "$k" 2>/dev/null)" || continue
      if [ "$now" != "$v" ]; then
        sysctl -q -w "$k=$v" >/dev/null 2>&1 && log "restored $k=$v (was $now)" || log "could not restore $k=$v"
      fi
    done <"$HOST/sysctl"
  fi
  # the CNI bridge
  if [ ! -f "$HOST/cni0-existed" ] && ip -o link show cni0 >/dev/null 2>&1; then
    ip link delete cni0 && log "removed interface cni0"
  fi
  # cgroups the kubelet made (empty once the pods are gone), deepest first
  local d
  for d in $(find /sys/fs/cgroup/*/kubepods -depth -type d 2>/dev/null); do
    grep -qx "$(echo "$d" | cut -d/ -f1-5)" "$HOST/cgroups" 2>/dev/null && continue
    rmdir "$d" 2>/dev/null || true
  done
  # paths written outside RUN
  local p
  for p in "${HOST_PATHS[@]}"; do
    [ -e "$p" ] || continue
    grep -qx "$p" "$HOST/paths" 2>/dev/null && continue
    if awk '{print $2}' /proc/mounts | grep -qE "^$p(/|$)"; then log "not removing $p: something is mounted under it"; continue; fi
    rm -rf "$p" && log "removed $p"
  done
  # /etc/hosts
  if [ -f "$HOST/hosts-added" ]; then
    local tmp; tmp="$(mktemp)"
    grep -vxF "$HOSTS_LINE" /etc/hosts >"$tmp" || true
    cat "$tmp" >/etc/hosts; rm -f "$tmp"
    log "removed $NODE from /etc/hosts"
  fi
}

down() {
  [ "$(id -u)" = 0 ] || { log "the cluster needs root"; exit 1; }
  t0=$SECONDS
  if [ ! -d "$RUN" ]; then log "not running"; return 0; fi
  log "stopping the cluster"
  stop_pid "$PIDS/kube-controller-manager.pid" kube-controller-manager "$(bin_of kube-controller-manager)"
  stop_pid "$PIDS/kube-scheduler.pid" kube-scheduler "$(bin_of kube-scheduler)"
  if running kube-apiserver && running kubelet; then drain_pods; fi
  stop_pid "$PIDS/kube-proxy.pid" kube-proxy "$(bin_of kube-proxy)"
  stop_pid "$PIDS/kubelet.pid" kubelet "$(bin_of kubelet)"
  force_cleanup
  stop_pid "$PIDS/kube-apiserver.pid" kube-apiserver "$(bin_of kube-apiserver)"
  stop_pid "$PIDS/etcd.pid" etcd "$(bin_of etcd)"
  stop_pid "$PIDS/containerd.pid" containerd "$(bin_of containerd)"
  kill_shims
  unmount_ours
  clean_iptables
  if [ -f "$HOST/.complete" ]; then restore_host; fi
  # IP reservations of sandboxes that are gone, and the runtime dir (tmpfs).
  rm -rf "$RT" "$RUN/cni/ipam"
  rm -rf "$HOST"
  log "down after $(since) (registry left running: scripts/k8s/registry.sh down stops it)"
}

# ---------------------------------------------------------------- status
status() {
  local c rc=0
  for c in "${COMPONENTS[@]}"; do
    if running "$c"; then printf '%-24s running (pid %s)\n' "$c" "$(cat "$PIDS/$c.pid")"
    else printf '%-24s stopped\n' "$c"; rc=3; fi
  done
  "$HERE/registry.sh" status || true
  if [ "$rc" = 0 ] && kubelet_healthy && node_ready; then
    echo "node $NODE: Ready ($("$BIN/kubectl" version --client 2>/dev/null | head -1 | sed 's/Client Version: //'))"
  else
    echo "node $NODE: not Ready"; rc=3
  fi
  echo "kubeconfig: $KUBECONFIG_ADMIN"
  return "$rc"
}

case "${1:-}" in
  up) take_lock "$RUN.lock"; up ;;
  down) take_lock "$RUN.lock"; down ;;
  status) status ;;
  import) shift; [ -n "${1:-}" ] || { echo "usage: $0 import IMAGE.tar" >&2; exit 2; }; import_image "$1" ;;
  *) echo "usage: $0 up|down|status|import DOCKER_SAVE.tar" >&2; exit 2 ;;
esac
