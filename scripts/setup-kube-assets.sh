#!/usr/bin/env bash
# Obtains the envtest-style control-plane binaries (kube-apiserver, etcd, kubectl) for ONE pinned
# Kubernetes version and prints their directory as the LAST line of stdout:
#
#   export KUBEBUILDER_ASSETS="$(scripts/setup-kube-assets.sh)"
#
# No prebuilt binaries can be downloaded on these machines, so they are built from the Go module
# proxy in a throwaway module:
#   - kube-apiserver and kubectl from k8s.io/kubernetes, whose go.mod points every k8s.io/* staging
#     module at ./staging/src/...; the throwaway go.mod maps each of them to its published
#     v0.<minor>.<patch> instead (that is why a plain `go install` cannot build it);
#   - etcd from go.etcd.io/etcd/server/v3 (the release's main.go is a one-line call to
#     etcdmain.Main, reproduced here), the version Kubernetes itself pins for that release.
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS, when it already holds kube-apiserver and etcd;
#   2. the cache ${LETHE_KUBE_ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/kube-assets}/<version>/,
#      outside the repository, when its stamp matches the pins below;
#   3. a build into that cache. Measured cold on a 2-core machine: 7 min wall, peak RSS 2.35 GB for
#      one process (the link of kube-apiserver; ~2.5 GB for all processes together), ~4.3 GB of
#      module and build caches under $TMPDIR while it runs (removed afterwards); 197 MB cached.
#
# Progress goes to stderr; stdout carries only the directory.
#
# Environment:
#   LETHE_KUBE_ASSETS_CACHE        cache root (default above)
#   LETHE_KUBE_ASSETS_NO_KUBECTL=1 skip kubectl (a cold build then takes ~5.5 min instead of ~7)
#   LETHE_KUBE_ASSETS_KEEP_GOCACHE=1 build with the user's Go caches and keep them (faster rebuilds
#                                  after a pin bump); by default a private GOMODCACHE/GOCACHE is used
#                                  and deleted after the build
set -euo pipefail

# --- pins (test/support/kube-apiserver.ts reads KUBE_VERSION from this line) ---
KUBE_VERSION=1.37.2
# The etcd that Kubernetes 1.37 itself tests with (hack/lib/etcd.sh: ETCD_VERSION=3.7.0; kubeadm's
# MinExternalEtcdVersion is 3.5.24, so Debian's etcd-server 3.4.23 is too old). Latest 3.7 patch.
ETCD_VERSION=3.7.3
# The first Go that both modules declare (`go 1.26.0` in k8s.io/kubernetes v1.37.2's go.mod).
GO_MIN=1.26

log() { printf 'setup-kube-assets: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

has_assets() { # dir -> 0 when kube-apiserver and etcd are executables there
  [ -n "$1" ] && [ -x "$1/kube-apiserver" ] && [ -x "$1/etcd" ]
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  if has_assets "$KUBEBUILDER_ASSETS"; then
    log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
    printf '%s\n' "$KUBEBUILDER_ASSETS"
    exit 0
  fi
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver or etcd: using the cache instead"
fi

cache_root="${LETHE_KUBE_ASSETS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/kube-assets}"
dest="$cache_root/$KUBE_VERSION"
want_kubectl=1
[ "${LETHE_KUBE_ASSETS_NO_KUBECTL:-}" = 1 ] && want_kubectl=0
stamp="kube=v$KUBE_VERSION etcd=v$ETCD_VERSION"

is_complete() {
  has_assets "$dest" && [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$stamp" ] &&
    { [ "$want_kubectl" = 0 ] || [ -x "$dest/kubectl" ]; }
}

if is_complete; then
  log "cached: $dest"
  printf '%s\n' "$dest"
  exit 0
fi

# --- build ---
command -v go >/dev/null 2>&1 ||
  die "Go is not installed (need go >= $GO_MIN to build kube-apiserver and etcd from the Go module proxy): install Go, or set KUBEBUILDER_ASSETS to a directory holding kube-apiserver, etcd and kubectl v$KUBE_VERSION"
go_version="$(go env GOVERSION)" # e.g. go1.26.8
go_mm="${go_version#go}"
if ! printf '%s\n%s\n' "$GO_MIN" "$go_mm" | sort -V -C; then
  die "$go_version is too old: Kubernetes v$KUBE_VERSION needs go >= $GO_MIN"
fi

mkdir -p "$cache_root"
# One build at a time per cache root; a second caller waits, then finds the cache complete.
exec 9>"$cache_root/.lock"
if command -v flock >/dev/null 2>&1; then
  if ! flock -n 9; then
    log "another setup-kube-assets.sh holds $cache_root/.lock: waiting (30 min at most)"
    flock -w 1800 9 || die "timed out waiting for another setup-kube-assets.sh to finish"
  fi
  if is_complete; then
    log "cached (built by another run): $dest"
    printf '%s\n' "$dest"
    exit 0
  fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/lethe-kube-assets.XXXXXX")"
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Offline-friendly, reproducible settings; no toolchain download behind our back.
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 GO111MODULE=on GOWORK=off
if [ "${LETHE_KUBE_ASSETS_KEEP_GOCACHE:-}" != 1 ]; then
  export GOMODCACHE="$work/gomod" GOCACHE="$work/gocache"
fi
started=$SECONDS

# 1. kube-apiserver (+ kubectl) from k8s.io/kubernetes with the staging modules replaced.
kube_mod="$work/kube"
mkdir -p "$kube_mod" "$work/bin"
log "resolving k8s.io/kubernetes@v$KUBE_VERSION"
(cd "$kube_mod" && go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION") >"$work/download.json" 2>&1 || true
upstream_mod="$(sed -nE 's/^[[:space:]]*"GoMod": "(.*)",?$/\1/p' "$work/download.json")"
if [ -z "$upstream_mod" ] || [ ! -f "$upstream_mod" ]; then
  cat "$work/download.json" >&2
  die "the Go module proxy did not serve k8s.io/kubernetes@v$KUBE_VERSION (GOPROXY=$(go env GOPROXY))"
fi
staging_version="v0.${KUBE_VERSION#1.}"
{
  printf 'module lethe.local/kube-assets\n\ngo %s\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' "$GO_MIN" "$KUBE_VERSION"
  sed -n '/^replace (/,/^)/p' "$upstream_mod" |
    sed -nE "s#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+) => \./staging/src/.*#\t\1 => \1 $staging_version#p"
  printf ')\n'
} >"$kube_mod/go.mod"
grep -q 'k8s.io/apiserver =>' "$kube_mod/go.mod" || die "found no staging replace lines in $upstream_mod"
cat >"$kube_mod/tools.go" <<'EOF'
//go:build tools

// Keeps the commands' dependencies in go.mod for `go mod tidy`.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
log "go mod tidy (kube, $(grep -c ' => ' "$kube_mod/go.mod") staging modules -> $staging_version)"
(cd "$kube_mod" && go mod tidy) >&2 2>"$work/tidy-kube.log" || { cat "$work/tidy-kube.log" >&2; die "go mod tidy failed for k8s.io/kubernetes@v$KUBE_VERSION"; }

# What hack/lib/version.sh stamps into release builds, so /version and `kubectl version` report
# v$KUBE_VERSION rather than v0.0.0-master.
minor="${KUBE_VERSION#*.}"; minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
targets=(k8s.io/kubernetes/cmd/kube-apiserver)
[ "$want_kubectl" = 1 ] && targets+=(k8s.io/kubernetes/cmd/kubectl)
log "go build ${targets[*]} (several minutes on 2 cores)"
(cd "$kube_mod" && go build -trimpath -ldflags="$ldflags" -o "$work/bin/" "${targets[@]}") >&2 ||
  die "go build of kube-apiserver v$KUBE_VERSION failed"

# 2. etcd: go.etcd.io/etcd/server/v3 with the release's one-line main.
etcd_mod="$work/etcd"
mkdir -p "$etcd_mod"
printf 'module lethe.local/etcd-assets\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$GO_MIN" "$ETCD_VERSION" >"$etcd_mod/go.mod"
cat >"$etcd_mod/main.go" <<'EOF'
// The etcd release binary's main (etcd's own main.go).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
log "go mod tidy (etcd v$ETCD_VERSION)"
(cd "$etcd_mod" && go mod tidy) >&2 2>"$work/tidy-etcd.log" || { cat "$work/tidy-etcd.log" >&2; die "go mod tidy failed for go.etcd.io/etcd/server/v3@v$ETCD_VERSION"; }
log "go build etcd"
(cd "$etcd_mod" && go build -trimpath \
  -ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION" -o "$work/bin/etcd" .) >&2 ||
  die "go build of etcd v$ETCD_VERSION failed"

# 3. smoke-check and install into the cache.
"$work/bin/kube-apiserver" --version >&2 || die "the built kube-apiserver does not run"
"$work/bin/etcd" --version >&2 || die "the built etcd does not run"
mkdir -p "$dest"
rm -f "$dest/.stamp"
for b in "$work"/bin/*; do
  mv -f "$b" "$dest/$(basename "$b").new"
  mv -f "$dest/$(basename "$b").new" "$dest/$(basename "$b")"
done
printf '%s\n' "$stamp" >"$dest/.stamp"
log "built in $((SECONDS - started)) s: $(du -sh "$dest" | cut -f1) in $dest"
printf '%s\n' "$dest"
