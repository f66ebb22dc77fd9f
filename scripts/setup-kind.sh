#!/usr/bin/env bash
# Everything the kind end-to-end test (test/e2e/kind/run.sh) needs, on a machine with no image
# registry: Debian's Docker engine, kind from the Go module proxy, a kind node image assembled
# here with Kubernetes built from the Go module proxy, and every image the scenario runs, built
# from Debian packages. README's "Kind end to end" says why each step is needed.
#
#   scripts/setup-kind.sh up      installs what is missing, starts dockerd when none answers,
#                                 installs the network fence, builds (or reuses) every image;
#                                 prints the path of an env file (LAST line of stdout) for run.sh
#   scripts/setup-kind.sh down [F] undoes what `up` started or added (F: that env file): removes
#                                 the fence rules and the kind network it created, stops the
#                                 dockerd it started. Never touches what was there before.
#   scripts/setup-kind.sh fence-check   exits 0 only when the fence rules are in place
#   scripts/setup-kind.sh env-path      prints where `up` writes the env file (known before `up` runs,
#                                 so a caller can run `down` even when `up` failed half-way)
#
# Everything built is cached under ${LETHE_CACHE:-$HOME/.cache/lethe}/kind/, keyed by the pinned
# versions below; a second run reuses it (binaries, rootfs tarballs, and Docker's data directory
# when this script starts dockerd). Kubernetes' kube-apiserver, kubectl and etcd come from
# scripts/setup-kube-assets.sh (the same pinned version, the same cache).
#
# The fence: the cluster must not reach any address outside this machine. Before any container
# starts, a chain LETHE-KIND-FENCE is hooked into iptables' DOCKER-USER (FORWARD): anything from
# the kind network, the pod range or the Service range whose destination is not the kind network
# is dropped, except replies of established connections. The kind network is created here with a
# fixed subnet and bridge name, so the rule is exact before the first node starts.
#
# Progress (with timings) goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- pins ---
KIND_VERSION=0.33.0
KUBE_VERSION="$(sed -nE 's/^KUBE_VERSION=([0-9.]+)$/\1/p' scripts/setup-kube-assets.sh)"
COREDNS_VERSION=1.14.6           # what kubeadm v1.37.2 asks for
PAUSE_TAGS=(3.10.2 3.10)         # kubeadm's, and the sandbox image kind's containerd config pins
ETCD_TAG=3.7.0-0                 # kubeadm's etcd image tag (the binary is setup-kube-assets' 3.7.3)
DEBIAN_SUITE=bookworm            # Debian 12: docker.io 20.10.24, containerd 1.6.20, runc 1.1.5,
                                 # postgresql-15, nats-server 2.9.10
DEBIAN_PACKAGES=(docker.io debootstrap iptables containernetworking-plugins conntrack socat ethtool jq)
NPM_VERSION=11.19.1              # npm in the Node.js image (the repository's Dockerfile runs npm ci)
NODE_IMAGE_REV=1                 # bump when the node image recipe below changes
SERVICES_IMAGE_REV=1             # bump when the PostgreSQL/NATS image recipe changes
NODEJS_IMAGE_REV=2               # bump when the Node.js image recipe changes (its tag is the Dockerfile's)
# The kind network: fixed so the fence can be exact before any node exists. Pod and Service ranges
# are kind's defaults (the kind config in test/e2e/kind/ pins them too).
KIND_NET_NAME=kind
KIND_NET_SUBNET=172.30.99.0/24
KIND_NET_BRIDGE=lethe-kind0
POD_SUBNET=10.244.0.0/16
SERVICE_SUBNET=10.96.0.0/12
FENCE_CHAIN=LETHE-KIND-FENCE

cache="${LETHE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe}/kind"
gocache_root="${LETHE_GO_CACHE:-${LETHE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe}/go}"

readonly NODE_IMAGE="local/kind-node:v$KUBE_VERSION-lethe$NODE_IMAGE_REV"
readonly DEBIAN_IMAGE="local/debian:$DEBIAN_SUITE"
readonly SERVICES_IMAGE="local/lethe-e2e-services:$DEBIAN_SUITE-$SERVICES_IMAGE_REV"
readonly NODEJS_IMAGE_TAG="node:$(sed -nE 's/^NODE_VERSION="([0-9.]+)"$/\1/p' scripts/setup-node.sh)-bookworm-slim"

t0=$SECONDS
set -E
trap 'log "error: line $LINENO failed: $BASH_COMMAND"' ERR
log() { printf 'setup-kind [%4ds]: %s\n' "$((SECONDS - t0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# step NAME CMD...: runs CMD, logs its wall time.
step() {
  local name="$1" s=$SECONDS; shift
  log "$name ..."
  "$@"
  log "$name: done in $((SECONDS - s)) s"
}

# ------------------------------------------------------------------------------------------------
# host packages

install_packages() {
  local missing=() p
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then log "Debian packages: all present"; return; fi
  log "Debian packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq >&2
  timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# ------------------------------------------------------------------------------------------------
# Go builds (kind, Kubernetes' node binaries, CoreDNS, pause), one Go cache shared with
# setup-kube-assets.sh when LETHE_GO_CACHE / .ci/run says so

go_env() {
  export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 GO111MODULE=on GOWORK=off
  export GOCACHE="$gocache_root/build" GOMODCACHE="$gocache_root/mod"
  mkdir -p "$GOCACHE" "$GOMODCACHE"
}

build_kind() {
  local dest="$cache/kind-v$KIND_VERSION"
  if [ -x "$dest/kind" ] && "$dest/kind" version 2>/dev/null | grep -q "v$KIND_VERSION "; then
    log "kind: cached ($dest/kind)"
  else
    (go_env; GOBIN="$dest" nice timeout 1200 go install "sigs.k8s.io/kind@v$KIND_VERSION") >&2 ||
      die "go install sigs.k8s.io/kind@v$KIND_VERSION failed"
  fi
  KIND="$dest/kind"
  # kind's node image files (systemd units, containerd config, entrypoint) from its module source.
  KIND_SRC="$(go_env; go mod download -json "sigs.k8s.io/kind@v$KIND_VERSION" | sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')"
  [ -d "$KIND_SRC/images/base/files" ] || die "kind's module source has no images/base/files ($KIND_SRC)"
}

# kubeadm, kubelet, kube-controller-manager, kube-scheduler, kube-proxy from k8s.io/kubernetes
# (the same scratch-module technique as setup-kube-assets.sh); kube-apiserver, kubectl and etcd
# come from setup-kube-assets.sh.
build_kube() {
  local dest="$cache/kubernetes-v$KUBE_VERSION" stamp="kube=v$KUBE_VERSION"
  local bins=(kubeadm kubelet kube-controller-manager kube-scheduler kube-proxy) b
  # With this script's Go cache, so that a cold build compiles the Kubernetes packages once for
  # both (the node binaries below reuse them).
  KUBE_ASSETS="$(KUBEBUILDER_ASSETS='' LETHE_KUBE_ASSETS_KEEP_GOCACHE=1 GOCACHE="$gocache_root/build" \
    GOMODCACHE="$gocache_root/mod" scripts/setup-kube-assets.sh)"
  [ -x "$KUBE_ASSETS/kubectl" ] || die "setup-kube-assets.sh gave no kubectl in $KUBE_ASSETS"
  KUBE_BIN="$dest"
  if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$stamp" ]; then
    log "Kubernetes node binaries: cached ($dest)"
    return
  fi
  local mod="$cache/work/kube-mod"
  rm -rf "$mod" && mkdir -p "$mod" "$dest"
  (
    go_env
    cd "$mod"
    local upstream
    upstream="$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -nE 's/^[[:space:]]*"GoMod": "(.*)",?$/\1/p')"
    [ -f "$upstream" ] || die "the Go module proxy did not serve k8s.io/kubernetes@v$KUBE_VERSION"
    {
      printf 'module lethe.local/kind-node\n\ngo 1.26\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' "$KUBE_VERSION"
      sed -n '/^replace (/,/^)/p' "$upstream" |
        sed -nE "s#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+) => \./staging/src/.*#\t\1 => \1 v0.${KUBE_VERSION#1.}#p"
      printf ')\n'
    } >go.mod
    printf '//go:build tools\n\npackage tools\n\nimport (\n' >tools.go
    for b in "${bins[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b" >>tools.go; done
    printf ')\n' >>tools.go
    timeout 900 go mod tidy >&2 2>tidy.log || { cat tidy.log >&2; exit 1; }
    local minor="${KUBE_VERSION#*.}" ldflags="-s -w" pkg
    minor="${minor%%.*}"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
      ldflags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
    done
    local targets=()
    for b in "${bins[@]}"; do targets+=("k8s.io/kubernetes/cmd/$b"); done
    log "go build ${bins[*]} (the longest step: ~4 min after setup-kube-assets.sh filled the Go cache, ~30 min cold on a loaded machine)"
    nice timeout 3600 go build -trimpath -ldflags="$ldflags" -o "$dest/" "${targets[@]}" >&2
  ) || die "building the Kubernetes v$KUBE_VERSION node binaries failed"
  "$dest/kubeadm" version -o short | grep -qx "v$KUBE_VERSION" || die "kubeadm does not report v$KUBE_VERSION"
  printf '%s\n' "$stamp" >"$dest/.stamp"
  rm -rf "$mod"
}

build_small_binaries() {
  # CoreDNS with only the plugins of kubeadm's Corefile (the full build compiles every cloud
  # provider's SDK), on the client-go of the Kubernetes build above, whose packages are compiled
  # already.
  local dest="$cache/bin-coredns-v$COREDNS_VERSION-k8s$KUBE_VERSION"
  if [ -x "$dest/coredns" ]; then
    log "CoreDNS: cached"
  else
    local mod="$cache/work/coredns-mod" p
    rm -rf "$mod" && mkdir -p "$mod" "$dest"
    printf 'module lethe.local/coredns\n\ngo 1.26\n\nrequire (\n\tgithub.com/coredns/coredns v%s\n' "$COREDNS_VERSION" >"$mod/go.mod"
    for p in api apimachinery client-go; do printf '\tk8s.io/%s v0.%s\n' "$p" "${KUBE_VERSION#1.}" >>"$mod/go.mod"; done
    printf ')\n' >>"$mod/go.mod"
    {
      printf '// CoreDNS with the plugins of kubeadm'"'"'s Corefile only.\npackage main\n\nimport (\n'
      for p in errors health ready kubernetes metrics forward cache loop reload loadbalance log; do
        printf '\t_ "github.com/coredns/coredns/plugin/%s"\n' "$p"
      done
      printf '\t"github.com/coredns/coredns/coremain"\n)\n\nfunc main() { coremain.Run() }\n'
    } >"$mod/main.go"
    log "go build CoreDNS v$COREDNS_VERSION (kubeadm's plugins only)"
    (go_env; cd "$mod" && timeout 900 go mod tidy >&2 && nice timeout 1800 go build -trimpath -ldflags='-s -w' -o "$dest/coredns" .) >&2 ||
      die "building CoreDNS v$COREDNS_VERSION failed"
    "$dest/coredns" -plugins | grep -qx kubernetes || die "the CoreDNS build lacks the kubernetes plugin"
    rm -rf "$mod"
  fi
  COREDNS_BIN="$dest/coredns"
  # pause and the fence probe: tiny programs in this repository.
  SMALL_BIN="$cache/bin-local"
  mkdir -p "$SMALL_BIN"
  (go_env; cd test/e2e/kind/cmd && nice go build -trimpath -ldflags='-s -w' -o "$SMALL_BIN/" ./pause ./netprobe) >&2 ||
    die "building test/e2e/kind/cmd failed"
}

# ------------------------------------------------------------------------------------------------
# Debian root filesystems (debootstrap), cached as tarballs

debian_mirror() {
  local m
  m="$(sed -nE 's#^URIs: (https?://[^ ]*/debian)$#\1#p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)"
  [ -n "$m" ] || m="$(sed -nE 's#^deb (https?://[^ ]*/debian) .*#\1#p' /etc/apt/sources.list 2>/dev/null | head -n1)"
  printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

# rootfs NAME PACKAGES: $cache/rootfs/NAME-SUITE.tar (a debootstrap minbase + PACKAGES)
rootfs() {
  local name="$1" packages="$2" tar="$cache/rootfs/$1-$DEBIAN_SUITE.tar"
  if [ -f "$tar" ] && [ "$(cat "$tar.packages" 2>/dev/null)" = "$packages" ]; then
    log "rootfs $name: cached"
    return
  fi
  local dir="$cache/work/rootfs-$name"
  rm -rf "$dir" && mkdir -p "$dir" "$cache/debs" "$cache/rootfs"
  log "debootstrap $name ($packages)"
  nice timeout 1800 debootstrap --variant=minbase --cache-dir="$cache/debs" --include="$packages" \
    "$DEBIAN_SUITE" "$dir" "$(debian_mirror)" >"$cache/work/debootstrap-$name.log" 2>&1 ||
    { tail -n 30 "$cache/work/debootstrap-$name.log" >&2; die "debootstrap $name failed"; }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc "$dir"/usr/share/man
  tar -C "$dir" -cf "$tar.partial" .
  mv "$tar.partial" "$tar"
  printf '%s\n' "$packages" >"$tar.packages"
  rm -rf "$dir"
}

build_rootfs_all() {
  rootfs min "iptables,conntrack,ca-certificates"
  rootfs services "postgresql-15,nats-server,ca-certificates"
  rootfs node "systemd,systemd-sysv,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins,socat"
}

# ------------------------------------------------------------------------------------------------
# dockerd (with the runc wrapper this VM needs) and the fence

docker_answers() { timeout 20 docker info >/dev/null 2>&1; }

write_runc_wrapper() {
  mkdir -p "$cache/docker-config"
  cat >"$cache/docker-config/runc-wrap" <<'EOF'
#!/bin/bash
# This VM's capability bounding set lacks CAP_SYS_RESOURCE: every privileged container (kind's
# node) and every `docker exec --privileged` would fail with "unable to apply caps". Drop it from
# the OCI spec (and keep oomScoreAdj/RLIMIT_NOFILE within what the host allows), then run runc.
fix() { # file where ("config": .process of a bundle's config.json; "process": a process file)
  jq --arg where "$2" --argjson hard "$(ulimit -Hn)" '
    def fix: (if .capabilities then .capabilities |= with_entries(.value |= map(select(. != "CAP_SYS_RESOURCE"))) else . end)
      | (if (.oomScoreAdj // 0) < 0 then .oomScoreAdj = 0 else . end)
      | (if .rlimits then .rlimits |= map(if .type == "RLIMIT_NOFILE" then .hard = ([.hard, $hard] | min) | .soft = ([.soft, $hard] | min) else . end) else . end);
    if $where == "config" then .process |= fix else fix end' "$1" >"$1.wrap" && mv "$1.wrap" "$1"
}
args=("$@") bundle="" process="" cmd="" i=0
while [ $i -lt ${#args[@]} ]; do
  a="${args[$i]}"
  case "$a" in
    --bundle|-b) bundle="${args[$((i + 1))]}"; i=$((i + 1)) ;;
    --bundle=*) bundle="${a#--bundle=}" ;;
    --process|-p) process="${args[$((i + 1))]}"; i=$((i + 1)) ;;
    --process=*) process="${a#--process=}" ;;
    create|run|exec) [ -z "$cmd" ] && cmd="$a" ;;
  esac
  i=$((i + 1))
done
if { [ "$cmd" = create ] || [ "$cmd" = run ]; } && [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  fix "$bundle/config.json" config
elif [ "$cmd" = exec ] && [ -n "$process" ] && [ -f "$process" ]; then
  fix "$process" process
fi
exec /usr/sbin/runc "$@"
EOF
  chmod 755 "$cache/docker-config/runc-wrap"
}

start_dockerd() {
  STARTED_DOCKERD_PID=""
  if docker_answers; then
    log "dockerd: one already answers ($(docker info --format '{{.ServerVersion}}' 2>/dev/null)); using it"
    docker info --format '{{json .Runtimes}} {{.DefaultRuntime}}' 2>/dev/null | grep -q runc-wrap ||
      log "warning: that dockerd's default runtime is not a runc wrapper; privileged containers may fail on this VM (see README)"
    return
  fi
  write_runc_wrapper
  local cfg="$cache/docker-config/daemon.json"
  printf '{ "runtimes": { "runc-wrap": { "path": "%s" } }, "default-runtime": "runc-wrap",\n  "data-root": "%s", "storage-driver": "overlay2" }\n' \
    "$cache/docker-config/runc-wrap" "$cache/docker" >"$cfg"
  mkdir -p "$cache/docker"
  log "starting dockerd (data root $cache/docker)"
  # 8>&-: dockerd must not inherit (and so hold) the set-up lock.
  setsid /usr/sbin/dockerd --config-file "$cfg" >"$cache/dockerd.log" 2>&1 </dev/null 8>&- &
  STARTED_DOCKERD_PID=$!
  local i
  for i in $(seq 1 60); do
    docker_answers && break
    kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || { tail -n 20 "$cache/dockerd.log" >&2; die "dockerd exited"; }
    sleep 1
  done
  docker_answers || { tail -n 20 "$cache/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
}

fence_sources() { printf '%s\n' "$KIND_NET_SUBNET" "$POD_SUBNET" "$SERVICE_SUBNET"; }

fence_check() {
  iptables -w 10 -S "$FENCE_CHAIN" >/dev/null 2>&1 || return 1
  iptables -w 10 -C "$FENCE_CHAIN" -j DROP 2>/dev/null || return 1
  iptables -w 10 -C FORWARD -j DOCKER-USER 2>/dev/null || return 1
  # the jump must be the first rule of DOCKER-USER for each source, and the bridge
  local s
  for s in $(fence_sources); do
    iptables -w 10 -C DOCKER-USER -s "$s" -j "$FENCE_CHAIN" 2>/dev/null || return 1
  done
  iptables -w 10 -C DOCKER-USER -i "$KIND_NET_BRIDGE" -j "$FENCE_CHAIN" 2>/dev/null || return 1
}

# Installs the fence; FENCE_ADDED=1 when this run added it (so `down` removes it).
fence_install() {
  FENCE_ADDED=0
  if fence_check; then log "fence: already in place"; return; fi
  FENCE_ADDED=1
  # dockerd creates DOCKER-USER at start; create it (and the FORWARD jump) if it does not exist.
  iptables -w 10 -N DOCKER-USER 2>/dev/null || true
  iptables -w 10 -C FORWARD -j DOCKER-USER 2>/dev/null || iptables -w 10 -I FORWARD 1 -j DOCKER-USER
  iptables -w 10 -N "$FENCE_CHAIN" 2>/dev/null || iptables -w 10 -F "$FENCE_CHAIN"
  iptables -w 10 -A "$FENCE_CHAIN" -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
  iptables -w 10 -A "$FENCE_CHAIN" -d "$KIND_NET_SUBNET" -j RETURN
  iptables -w 10 -A "$FENCE_CHAIN" -j DROP
  local s
  iptables -w 10 -C DOCKER-USER -i "$KIND_NET_BRIDGE" -j "$FENCE_CHAIN" 2>/dev/null ||
    iptables -w 10 -I DOCKER-USER 1 -i "$KIND_NET_BRIDGE" -j "$FENCE_CHAIN"
  for s in $(fence_sources); do
    iptables -w 10 -C DOCKER-USER -s "$s" -j "$FENCE_CHAIN" 2>/dev/null ||
      iptables -w 10 -I DOCKER-USER 1 -s "$s" -j "$FENCE_CHAIN"
  done
  fence_check || die "the fence rules did not take"
  log "fence: installed (iptables -S $FENCE_CHAIN; -S DOCKER-USER):"
  { iptables -w 10 -S "$FENCE_CHAIN"; iptables -w 10 -S DOCKER-USER; } | sed 's/^/    /' >&2
}

fence_remove() {
  local s
  iptables -w 10 -D DOCKER-USER -i "$KIND_NET_BRIDGE" -j "$FENCE_CHAIN" 2>/dev/null || true
  for s in $(fence_sources); do
    iptables -w 10 -D DOCKER-USER -s "$s" -j "$FENCE_CHAIN" 2>/dev/null || true
  done
  iptables -w 10 -F "$FENCE_CHAIN" 2>/dev/null || true
  iptables -w 10 -X "$FENCE_CHAIN" 2>/dev/null || true
}

# The kind network with a fixed subnet and bridge name (kind uses an existing network named kind).
kind_network() {
  NETWORK_ADDED=0
  if docker network inspect "$KIND_NET_NAME" >/dev/null 2>&1; then
    local subnet
    subnet="$(docker network inspect "$KIND_NET_NAME" --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}')"
    case " $subnet " in
      *" $KIND_NET_SUBNET "*) log "kind network: present ($KIND_NET_SUBNET)" ;;
      *) die "a Docker network '$KIND_NET_NAME' exists with subnet '$subnet', not $KIND_NET_SUBNET: the fence would not cover it (remove it: docker network rm $KIND_NET_NAME)" ;;
    esac
    return
  fi
  docker network create --driver bridge --subnet "$KIND_NET_SUBNET" \
    -o com.docker.network.bridge.name="$KIND_NET_BRIDGE" \
    -o com.docker.network.bridge.enable_ip_masquerade=true \
    -o com.docker.network.driver.mtu=1500 "$KIND_NET_NAME" >/dev/null
  NETWORK_ADDED=1
  log "kind network: created ($KIND_NET_SUBNET on $KIND_NET_BRIDGE)"
}

# ------------------------------------------------------------------------------------------------
# images

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# docker_build TAG DIR: a build with no network (everything is in DIR already).
docker_build() {
  DOCKER_BUILDKIT=0 timeout 900 docker build --network none -q -t "$1" "$2" >/dev/null 2>"$cache/work/docker-build.err" ||
    { grep -v 'DEPRECATED\|BuildKit\|environment-variable' "$cache/work/docker-build.err" >&2; die "docker build of $1 failed"; }
}

import_rootfs() { # name image
  if image_exists "$2"; then return; fi
  timeout 600 docker import - "$2" <"$cache/rootfs/$1-$DEBIAN_SUITE.tar" >/dev/null
}

build_images() {
  local ctx="$cache/work/ctx"
  import_rootfs min "$DEBIAN_IMAGE"

  # Node.js (the tag the repository's Dockerfile names, which cannot be pulled here): the npm
  # registry's official binary (scripts/setup-node.sh) on the Debian image. run.sh builds Lethe's
  # image on it.
  if [ "$(docker image inspect -f '{{index .Config.Labels "dev.lethe.e2e.rev"}}' "$NODEJS_IMAGE_TAG" 2>/dev/null)" != "$NODEJS_IMAGE_REV" ]; then
    local nodebin
    nodebin="$(scripts/setup-node.sh)"
    local npm_dir="$cache/npm-$NPM_VERSION"
    if [ ! -f "$npm_dir/node_modules/npm/bin/npm-cli.js" ]; then
      timeout 600 npm install --no-save --no-audit --no-fund --prefix "$npm_dir" "npm@$NPM_VERSION" >&2
    fi
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$nodebin/node" "$ctx/node"
    cp -a "$npm_dir/node_modules/npm" "$ctx/npm"
    # This machine's trust store (it may hold a proxy's CA that npm's registry traffic needs):
    # the Dockerfile's `npm ci` runs in a build container.
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
    cat >"$ctx/Dockerfile" <<EOF
FROM $DEBIAN_IMAGE
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && node --version && npm --version
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
LABEL dev.lethe.e2e.rev=$NODEJS_IMAGE_REV
CMD ["node"]
EOF
    docker_build "$NODEJS_IMAGE_TAG" "$ctx"
    log "image $NODEJS_IMAGE_TAG: built (node $(docker run --rm --network none "$NODEJS_IMAGE_TAG" node --version))"
  fi

  # PostgreSQL 15 and NATS from Debian, one image for both (numeric non-root users for the
  # restricted Pod Security level).
  if ! image_exists "$SERVICES_IMAGE"; then
    local pg_uid
    import_rootfs services "local/lethe-e2e-services-raw:$DEBIAN_SUITE"
    pg_uid="$(tar -xOf "$cache/rootfs/services-$DEBIAN_SUITE.tar" ./etc/passwd | awk -F: '$1 == "postgres" {print $3}')"
    [ -n "$pg_uid" ] || die "the services rootfs has no postgres user"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cat >"$ctx/Dockerfile" <<EOF
FROM local/lethe-e2e-services-raw:$DEBIAN_SUITE
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
USER $pg_uid:$pg_uid
EOF
    docker_build "$SERVICES_IMAGE" "$ctx"
    log "image $SERVICES_IMAGE: built (postgres uid $pg_uid)"
  fi
  SERVICES_UID="$(docker image inspect "$SERVICES_IMAGE" --format '{{.Config.User}}' | cut -d: -f1)"

  # The fence probe (a static program) on scratch.
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$SMALL_BIN/netprobe" "$ctx/"
  printf 'FROM scratch\nCOPY netprobe /netprobe\nUSER 65532:65532\nENTRYPOINT ["/netprobe"]\n' >"$ctx/Dockerfile"
  docker_build local/netprobe:e2e "$ctx"
}

# The control-plane and add-on images kubeadm and kind expect, then the node image with all of them
# in its containerd.
build_node_image() {
  if image_exists "$NODE_IMAGE"; then log "node image $NODE_IMAGE: cached"; return; fi
  local ctx="$cache/work/ctx" b
  import_rootfs node "local/kind-base-raw:$DEBIAN_SUITE"
  local imgs=()
  for b in kube-apiserver kube-controller-manager kube-scheduler etcd; do
    rm -rf "$ctx" && mkdir -p "$ctx"
    if [ "$b" = etcd ]; then cp "$KUBE_ASSETS/etcd" "$ctx/"; elif [ "$b" = kube-apiserver ]; then cp "$KUBE_ASSETS/$b" "$ctx/"; else cp "$KUBE_BIN/$b" "$ctx/"; fi
    printf 'FROM scratch\nCOPY %s /usr/local/bin/%s\nENV PATH=/usr/local/bin:/usr/bin:/bin\n' "$b" "$b" >"$ctx/Dockerfile"
    local tag="registry.k8s.io/$b:v$KUBE_VERSION"
    [ "$b" = etcd ] && tag="registry.k8s.io/etcd:$ETCD_TAG"
    docker_build "$tag" "$ctx"
    imgs+=("$tag")
  done
  rm -rf "$ctx" && mkdir -p "$ctx" && cp "$KUBE_BIN/kube-proxy" "$ctx/"
  printf 'FROM %s\nCOPY kube-proxy /usr/local/bin/kube-proxy\n' "$DEBIAN_IMAGE" >"$ctx/Dockerfile"
  docker_build "registry.k8s.io/kube-proxy:v$KUBE_VERSION" "$ctx"
  imgs+=("registry.k8s.io/kube-proxy:v$KUBE_VERSION")
  rm -rf "$ctx" && mkdir -p "$ctx" && cp "$COREDNS_BIN" "$ctx/"
  printf 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' >"$ctx/Dockerfile"
  docker_build "registry.k8s.io/coredns/coredns:v$COREDNS_VERSION" "$ctx"
  imgs+=("registry.k8s.io/coredns/coredns:v$COREDNS_VERSION")
  rm -rf "$ctx" && mkdir -p "$ctx" && cp "$SMALL_BIN/pause" "$ctx/"
  printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$ctx/Dockerfile"
  docker_build "registry.k8s.io/pause:${PAUSE_TAGS[0]}" "$ctx"
  for b in "${PAUSE_TAGS[@]:1}"; do docker tag "registry.k8s.io/pause:${PAUSE_TAGS[0]}" "registry.k8s.io/pause:$b"; done
  for b in "${PAUSE_TAGS[@]}"; do imgs+=("registry.k8s.io/pause:$b"); done
  # The images the scenario runs, preloaded too (Lethe's own image changes with every commit and
  # is loaded by run.sh).
  imgs+=("$SERVICES_IMAGE" "$DEBIAN_IMAGE" local/netprobe:e2e)

  # The stage image: kind's base image recipe on the debootstrap rootfs.
  rm -rf "$ctx" && mkdir -p "$ctx/files"
  cp -a "$KIND_SRC/images/base/files/." "$ctx/files/"
  chmod -R u+w "$ctx/files"
  cp "$KUBE_BIN/kubelet" "$KUBE_BIN/kubeadm" "$KUBE_ASSETS/kubectl" "$ctx/"
  cp test/e2e/kind/node/10-ptp.conflist "$ctx/"
  ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer|length] |= . + {"path":"/kind/bin/mount-product-files.sh"}' |
    jq 'del(.process.rlimits)' >"$ctx/cri-base.json"
  cat >"$ctx/Dockerfile" <<EOF
FROM local/kind-base-raw:$DEBIAN_SUITE
COPY files/usr/local/bin/ /usr/local/bin/
COPY files/kind/ /kind/
COPY files/etc/ /etc/
COPY cri-base.json /etc/containerd/cri-base.json
COPY 10-ptp.conflist /etc/cni/net.d/10-ptp.conflist
COPY kubelet kubeadm kubectl /usr/bin/
RUN chmod 755 /usr/local/bin/* /kind/bin/* \\
 && ln -sf /usr/bin/containerd /usr/local/bin/containerd \\
 && mkdir -p /opt/cni && rm -rf /opt/cni/bin && ln -s /usr/lib/cni /opt/cni/bin \\
 && sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml \\
 && grep -q 'restrict_oom_score_adj = true' /etc/containerd/config.toml \\
 && rm -f /lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
       /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
       /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \\
 && systemctl enable kubelet containerd undo-mount-hacks \\
 && systemctl mask systemd-binfmt \\
 && mkdir -p /etc/kubernetes/manifests \\
 && echo v$KUBE_VERSION > /kind/version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
EOF
  docker_build local/kind-node-stage:lethe "$ctx"
  # Preload every image into the stage's containerd (kind's own node-image build does the same).
  docker rm -f lethe-kind-node-build >/dev/null 2>&1 || true
  timeout 60 docker run -d --privileged --network none --name lethe-kind-node-build --entrypoint sleep local/kind-node-stage:lethe infinity >/dev/null
  timeout 30 docker exec lethe-kind-node-build bash -c 'nohup containerd >/var/log/containerd-build.log 2>&1 & echo $! >/run/containerd-build.pid'
  local i
  for i in $(seq 1 30); do
    docker exec lethe-kind-node-build test -S /run/containerd/containerd.sock && break
    sleep 1
  done
  for b in "${imgs[@]}"; do
    docker save "$b" | timeout 300 docker exec -i lethe-kind-node-build ctr --namespace=k8s.io images import \
      --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - >/dev/null ||
      die "importing $b into the node image failed"
  done
  # Stopped (or a zombie: the container's `sleep` does not reap it) within 30 s.
  docker exec lethe-kind-node-build bash -c 'p=$(cat /run/containerd-build.pid); kill $p
    for i in $(seq 1 30); do s=$(awk "{print \$3}" /proc/$p/stat 2>/dev/null); { [ -z "$s" ] || [ "$s" = Z ]; } && exit 0; sleep 1; done; exit 1' ||
    die "containerd in the node image build did not stop"
  docker exec lethe-kind-node-build rm -f /run/containerd-build.pid /var/log/containerd-build.log
  docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint","/sbin/init"]' --change 'CMD []' \
    lethe-kind-node-build "$NODE_IMAGE" >/dev/null
  docker rm -f lethe-kind-node-build >/dev/null
  docker image rm local/kind-node-stage:lethe >/dev/null 2>&1 || true
  log "node image $NODE_IMAGE: built ($(docker image inspect "$NODE_IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
}

# ------------------------------------------------------------------------------------------------

env_file="$cache/run/env"
# record KEY VALUE: the state `down` reads (written as soon as something is started or added).
record() {
  mkdir -p "$(dirname "$env_file")"
  printf '%s=%q\n' "$1" "$2" >>"$env_file"
}

cmd_up() {
  command -v go >/dev/null 2>&1 || die "Go is not installed (needed to build kind and Kubernetes from the Go module proxy)"
  [ "$(id -u)" = 0 ] || die "needs root (dockerd, iptables, debootstrap)"
  local free_gb
  free_gb="$(df -BG --output=avail "$HOME" | tail -n1 | tr -dc 0-9)"
  [ "$free_gb" -ge 20 ] || die "only ${free_gb} GB free under $HOME; the set-up needs about 20 GB on a cold cache"
  mkdir -p "$cache/work"
  exec 8>"$cache/.lock"
  flock -w 3600 8 || die "another setup-kind.sh holds $cache/.lock"

  step "Debian packages" install_packages
  mkdir -p "$(dirname "$env_file")"
  : >"$env_file"
  # The fence first: no container runs before it is in place.
  step "dockerd" start_dockerd
  record LETHE_KIND_STARTED_DOCKERD_PID "$STARTED_DOCKERD_PID"
  step "fence" fence_install
  record LETHE_KIND_FENCE_ADDED "$FENCE_ADDED"
  step "kind network" kind_network
  record LETHE_KIND_NETWORK_ADDED "$NETWORK_ADDED"

  # debootstrap (network and disk bound) beside the Go builds (CPU bound).
  local rootfs_pid
  ( build_rootfs_all ) &
  rootfs_pid=$!
  step "kind v$KIND_VERSION" build_kind
  step "Kubernetes v$KUBE_VERSION binaries" build_kube
  step "CoreDNS, pause, netprobe" build_small_binaries
  step "Debian root filesystems" wait "$rootfs_pid"
  step "images" build_images
  step "node image" build_node_image

  {
    printf 'LETHE_KIND=%q\n' "$KIND"
    printf 'LETHE_KUBECTL=%q\n' "$KUBE_ASSETS/kubectl"
    printf 'LETHE_KIND_NODE_IMAGE=%q\n' "$NODE_IMAGE"
    printf 'LETHE_KIND_SERVICES_IMAGE=%q\n' "$SERVICES_IMAGE"
    printf 'LETHE_KIND_SERVICES_UID=%q\n' "$SERVICES_UID"
    printf 'LETHE_KIND_DEBIAN_IMAGE=%q\n' "$DEBIAN_IMAGE"
    printf 'LETHE_KIND_POD_SUBNET=%q\n' "$POD_SUBNET"
    printf 'LETHE_KIND_SERVICE_SUBNET=%q\n' "$SERVICE_SUBNET"
    printf 'LETHE_KIND_NET_SUBNET=%q\n' "$KIND_NET_SUBNET"
    printf 'LETHE_KIND_FENCE_CHAIN=%q\n' "$FENCE_CHAIN"
  } >>"$env_file"
  log "ready in $((SECONDS - t0)) s"
  printf '%s\n' "$env_file"
}

cmd_down() {
  local env_file="${1:-$env_file}"
  [ -f "$env_file" ] || { log "down: no $env_file, nothing to undo"; return; }
  # shellcheck disable=SC1090
  . "$env_file"
  if [ "${LETHE_KIND_NETWORK_ADDED:-0}" = 1 ] && docker_answers; then
    docker network rm "$KIND_NET_NAME" >/dev/null 2>&1 && log "down: kind network removed" ||
      log "down: the kind network is still in use; left in place"
  fi
  if [ -n "${LETHE_KIND_STARTED_DOCKERD_PID:-}" ] && kill -0 "$LETHE_KIND_STARTED_DOCKERD_PID" 2>/dev/null; then
    kill "$LETHE_KIND_STARTED_DOCKERD_PID"
    local i
    for i in $(seq 1 60); do kill -0 "$LETHE_KIND_STARTED_DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    if kill -0 "$LETHE_KIND_STARTED_DOCKERD_PID" 2>/dev/null; then log "down: dockerd did not stop within 60 s"; else log "down: dockerd stopped"; fi
  fi
  # Last: the fence stays while anything could still run.
  if [ "${LETHE_KIND_FENCE_ADDED:-0}" = 1 ]; then fence_remove; log "down: fence removed"; fi
  rm -f "$env_file"
}

case "${1:-up}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  fence-check) fence_check ;;
  env-path) printf '%s\n' "$env_file" ;;
  *) die "usage: setup-kind.sh [up | down [ENV_FILE] | fence-check | env-path]" ;;
esac
