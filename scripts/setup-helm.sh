#!/usr/bin/env bash
# Obtains ONE pinned helm binary for the chart checks and prints its path as the LAST line of stdout:
#
#   export LETHE_HELM="$(scripts/setup-helm.sh)"
#
# No prebuilt helm can be downloaded on these machines, so it is built with `go install` from the Go
# module proxy (helm.sh/helm/v3's go.mod has no replace lines, so a plain `go install` works).
#
# Order of preference:
#   1. $LETHE_HELM, when it is an executable;
#   2. the cache ${LETHE_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/tools}/helm-<version>/helm,
#      outside the repository;
#   3. a build into that cache with the user's Go caches (measured cold, empty Go caches, on a shared
#      2-core machine: 2.5 min of CPU, 5 min wall).
#
# Progress goes to stderr; stdout carries only the path.
set -euo pipefail

# --- pin (test/support/helm.ts reads HELM_VERSION from this line) ---
HELM_VERSION=3.22.0
GO_MIN=1.26

log() { printf 'setup-helm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -n "${LETHE_HELM:-}" ]; then
  if [ -x "$LETHE_HELM" ]; then
    log "using LETHE_HELM=$LETHE_HELM"
    printf '%s\n' "$LETHE_HELM"
    exit 0
  fi
  log "LETHE_HELM=$LETHE_HELM is not an executable: using the cache instead"
fi

cache_root="${LETHE_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/tools}"
dest="$cache_root/helm-$HELM_VERSION"
bin="$dest/helm"

# The stamp records how the binary was built; a binary without it (or from other pins) is rebuilt.
stamp_file="$dest/.stamp"
is_complete() { [ -x "$bin" ] && [ -f "$stamp_file" ] && grep -q "^helm=v$HELM_VERSION " "$stamp_file"; }

if is_complete; then
  log "cached: $bin"
  printf '%s\n' "$bin"
  exit 0
fi

command -v go >/dev/null 2>&1 ||
  die "Go is not installed (need go >= $GO_MIN to build helm v$HELM_VERSION from the Go module proxy): install Go, or set LETHE_HELM to a helm v3 binary"
go_version="$(go env GOVERSION)"
if ! printf '%s\n%s\n' "$GO_MIN" "${go_version#go}" | sort -V -C; then
  die "$go_version is too old: helm v$HELM_VERSION needs go >= $GO_MIN"
fi

mkdir -p "$cache_root"
# One build at a time per cache root; a second caller waits, then finds the cache complete.
exec 9>"$cache_root/.helm.lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 1200 9 || die "timed out waiting for another setup-helm.sh to finish"
  if is_complete; then
    log "cached (built by another run): $bin"
    printf '%s\n' "$bin"
    exit 0
  fi
fi

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 GO111MODULE=on GOWORK=off
started=$SECONDS
mkdir -p "$dest"
rm -f "$stamp_file"
# helm's Makefile stamps its version, and the Kubernetes version that `helm template` and `helm lint`
# assume (.Capabilities.KubeVersion) taken from its k8s.io/client-go module; a plain `go install`
# would leave v1.20, which this chart's kubeVersion refuses.
helm_mod="$(go mod download -json "helm.sh/helm/v3@v$HELM_VERSION" | sed -nE 's/^[[:space:]]*"GoMod": "(.*)",?$/\1/p')"
{ [ -n "$helm_mod" ] && [ -f "$helm_mod" ]; } || die "the Go module proxy did not serve helm.sh/helm/v3@v$HELM_VERSION (GOPROXY=$(go env GOPROXY))"
k8s_minor="$(sed -nE 's#^[[:space:]]*k8s\.io/client-go v0\.([0-9]+)\..*#\1#p' "$helm_mod" | head -n1)"
[ -n "$k8s_minor" ] || die "found no k8s.io/client-go requirement in $helm_mod"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
log "go install helm.sh/helm/v3/cmd/helm@v$HELM_VERSION (Kubernetes 1.$k8s_minor; a few minutes on 2 cores)"
GOBIN="$dest" go install -trimpath -ldflags="$ldflags" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" >&2 ||
  die "go install of helm v$HELM_VERSION failed (GOPROXY=$(go env GOPROXY))"
"$bin" version --short 2>/dev/null | grep -q "^v$HELM_VERSION" || die "the built helm does not report v$HELM_VERSION: $("$bin" version --short 2>&1 || true)"
printf 'helm=v%s k8s=1.%s\n' "$HELM_VERSION" "$k8s_minor" >"$stamp_file"
log "built in $((SECONDS - started)) s: $bin"
printf '%s\n' "$bin"
