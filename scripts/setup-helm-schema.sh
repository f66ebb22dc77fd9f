#!/usr/bin/env bash
# Obtains ONE pinned helm-values-schema-json (github.com/losisin/helm-values-schema-json), which
# writes the chart's values.schema.json from values.yaml's `# @schema` line comments, and prints
# its path as the LAST line of stdout:
#
#   export LETHE_HELM_SCHEMA="$(scripts/setup-helm-schema.sh)"
#
# Built from the Go module proxy into
# ${LETHE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lethe/tools}/helm-values-schema-json-<version>/,
# unless $LETHE_HELM_SCHEMA names an executable; scripts/lib/go-tool.sh says how. Measured cold,
# empty Go caches, on a shared 2-core machine: about 45 s of CPU, 32 to 76 s wall.
set -euo pipefail

HELM_SCHEMA_VERSION=1.9.2
GO_MIN=1.24

TOOL=helm-values-schema-json TOOL_VERSION=$HELM_SCHEMA_VERSION TOOL_MODULE=github.com/losisin/helm-values-schema-json TOOL_PACKAGE=. TOOL_ENV=LETHE_HELM_SCHEMA
# shellcheck source=lib/go-tool.sh
. "$(dirname "$0")/lib/go-tool.sh"

go_tool_main
