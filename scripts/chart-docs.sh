#!/usr/bin/env bash
# The chart's values.schema.json and README.md, both written from its annotated values.yaml (and the
# README's template, README.md.gotmpl):
#
#   scripts/chart-docs.sh           writes them (npm run chart:docs)
#   scripts/chart-docs.sh --check   fails, naming the file, when a checked-in one differs from what
#                                   the generators write (npm run lint:chart, part of npm test)
#
# The generators are pinned Go programs that scripts/setup-helm-schema.sh and
# scripts/setup-helm-docs.sh build once into ~/.cache/lethe/tools/ (LETHE_HELM_SCHEMA and
# LETHE_HELM_DOCS name other binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=deploy/helm/lethe
check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

helm_schema="$(scripts/setup-helm-schema.sh)"
helm_docs="$(scripts/setup-helm-docs.sh)"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# Draft 7, which every Helm 3 validates; every object closed unless its annotation opens it.
"$helm_schema" -input "$CHART/values.yaml" -output "$out/values.schema.json" -draft 7 -indent 2 \
  -noAdditionalProperties true -schemaRoot.title "Values of the Lethe chart" >/dev/null
# The values table in values.yaml's order, which groups them as the file does.
"$helm_docs" --chart-search-root "$CHART" --template-files README.md.gotmpl --sort-values-order file \
  --log-level error --dry-run >"$out/README.md"
[ -s "$out/README.md" ] || {
  echo "chart-docs: helm-docs wrote nothing for $CHART" >&2
  exit 1
}

stale=()
for f in values.schema.json README.md; do
  if $check; then
    cmp -s "$out/$f" "$CHART/$f" || stale+=("$CHART/$f")
  else
    cp "$out/$f" "$CHART/$f"
  fi
done
if [ ${#stale[@]} -gt 0 ]; then
  for f in "${stale[@]}"; do
    echo "chart-docs: $f differs from what $CHART/values.yaml generates:" >&2
    diff -u "$f" "$out/$(basename "$f")" | head -n 40 >&2 || true
  done
  echo "chart-docs: run \`npm run chart:docs\` and commit the result (edit values.yaml, README.md.gotmpl: never the generated files)" >&2
  exit 1
fi
$check && echo "chart-docs: $CHART/values.schema.json and README.md match values.yaml"
exit 0
