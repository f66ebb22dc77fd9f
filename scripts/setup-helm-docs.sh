#!/usr/bin/env bash
# Obtains ONE pinned helm-docs (github.com/norwoodj/helm-docs), which writes the chart's README from
# values.yaml's `# --` comments, and prints its path as the LAST line of stdout:
#
#   export LETHE_HELM_DOCS="$(scripts/setup-helm-docs.sh)"
#
# Built from the Go module proxy into
# ${LETHE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/tools}/helm-docs-<version>/helm-docs,
# unless $LETHE_HELM_DOCS names an executable; scripts/lib/go-tool.sh says how. Measured cold,
# empty Go caches, on a shared 2-core machine: about 1 min of CPU, 54 to 83 s wall.
set -euo pipefail

HELM_DOCS_VERSION=1.14.2
GO_MIN=1.22

TOOL=helm-docs TOOL_VERSION=$HELM_DOCS_VERSION TOOL_MODULE=github.com/norwoodj/helm-docs TOOL_PACKAGE=./cmd/helm-docs TOOL_ENV=LETHE_HELM_DOCS
# shellcheck source=lib/go-tool.sh
. "$(dirname "$0")/lib/go-tool.sh"

# It has no --version (its releases stamp one at link time): --help at least runs.
tool_check() { "$1" --help >/dev/null 2>&1 || die "the built helm-docs does not run: $("$1" --help 2>&1 || true)"; }

go_tool_main
