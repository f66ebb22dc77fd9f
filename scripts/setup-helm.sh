#!/usr/bin/env bash
# Obtains ONE pinned helm binary for the chart checks and prints its path as the LAST line of stdout:
#
#   export LETHE_HELM="$(scripts/setup-helm.sh)"
#
# Built from the Go module proxy (helm.sh/helm/v3's go.mod has no replace lines) into
# ${LETHE_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/tools}/helm-<version>/helm, unless
# $LETHE_HELM names an executable; scripts/lib/go-tool.sh says how. Measured cold, empty Go caches,
# on a shared 2-core machine: 2.5 min of CPU, 5 min wall.
set -euo pipefail

# --- pin (test/support/helm.ts reads HELM_VERSION from this line) ---
HELM_VERSION=3.22.0
GO_MIN=1.26

TOOL=helm TOOL_VERSION=$HELM_VERSION TOOL_MODULE=helm.sh/helm/v3 TOOL_PACKAGE=./cmd/helm TOOL_ENV=LETHE_HELM
# shellcheck source=lib/go-tool.sh
. "$(dirname "$0")/lib/go-tool.sh"

# helm's Makefile stamps its version, and the Kubernetes version that `helm template` and `helm lint`
# assume (.Capabilities.KubeVersion) taken from its k8s.io/client-go module; a plain build would
# leave v1.20, which this chart's kubeVersion refuses.
tool_prepare() {
  local k8s_minor pkg
  k8s_minor="$(sed -nE 's#^[[:space:]]*k8s\.io/client-go v0\.([0-9]+)\..*#\1#p' "$tool_gomod" | head -n1)"
  [ -n "$k8s_minor" ] || die "found no k8s.io/client-go requirement in $tool_gomod"
  TOOL_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    TOOL_LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  TOOL_STAMP_EXTRA="k8s=1.$k8s_minor"
  log "Kubernetes 1.$k8s_minor; a few minutes on 2 cores"
}
tool_check() {
  "$1" version --short 2>/dev/null | grep -q "^v$HELM_VERSION" || die "the built helm does not report v$HELM_VERSION: $("$1" version --short 2>&1 || true)"
}

go_tool_main LETHE_HELM_CACHE
