#!/usr/bin/env bash
# Lethe end to end on a real Kubernetes cluster (kind): `npm run test:e2e`.
#
#   1. creates a kind cluster, builds the image (Dockerfile) and loads it into the nodes;
#   2. installs PostgreSQL and NATS with JetStream (postgres.yaml, nats.yaml beside this file);
#   3. creates the Secrets (a TLS certificate from a throwaway CA too) and `helm install`s
#      deploy/helm/lethe with values.yaml (demo data on, TLS on);
#   4. deploys the downstream "orders" service with the purge sidecar
#      (deploy/helm/lethe/examples/sidecar-snippet.yaml, its tables from orders-schema.sql);
#   5. applies a Forget PrivacyRequest and waits for Succeeded with the orders purge confirmed in
#      status.downstream, and checks both databases;
#   6. applies an Export PrivacyRequest, fetches its artifact with `lethe export --request` through
#      `kubectl port-forward`, and checks its SHA-256 against status.artifact.sha256;
#   7. `helm uninstall`s (the CRD and the requests stay), then deletes the cluster (on any exit).
#
# Needs a Docker engine, kind, kubectl, helm (or LETHE_HELM, or Go for scripts/setup-helm.sh),
# node, and openssl. Without a Docker engine it says that NOTHING was tested and exits 3.
#
# Environment:
#   LETHE_E2E_CLUSTER   kind cluster name (default lethe-e2e)
#   LETHE_E2E_KEEP=1    keep the cluster at the end (for debugging)
#   LETHE_E2E_TIMEOUT   how long to wait for each request (default 300s)
set -euo pipefail
cd "$(dirname "$0")/../../.."

readonly EXIT_NOT_RUN=3
readonly here=test/e2e/kind
readonly cluster="${LETHE_E2E_CLUSTER:-lethe-e2e}"
readonly ns=lethe
readonly image=lethe:e2e
readonly wait_for="${LETHE_E2E_TIMEOUT:-300s}"

log() { printf 'e2e-kind: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# --- where it cannot run, say so and test nothing ---
if ! command -v docker >/dev/null 2>&1; then
  reason="the docker command is not installed"
elif ! docker_err="$(docker info 2>&1 >/dev/null)"; then
  reason="no Docker engine answers ($(printf '%s' "$docker_err" | grep -m1 -iE 'cannot connect|error|denied' || echo 'docker info failed'))"
else
  reason=""
fi
if [ -n "$reason" ]; then
  log "NOT RUN: $reason."
  log "The kind end-to-end test did NOT run on this machine: no cluster was created and nothing was tested."
  log "Run it where Docker runs (a laptop, or the hosted CI workflow .github/workflows/e2e-kind.yaml)."
  exit "$EXIT_NOT_RUN"
fi

missing=()
for tool in kind kubectl node openssl; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
[ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (install them; see .github/workflows/e2e-kind.yaml)"
if [ -n "${LETHE_HELM:-}" ]; then
  helm="$LETHE_HELM"
elif command -v helm >/dev/null 2>&1; then
  helm="$(command -v helm)"
else
  helm="$(scripts/setup-helm.sh)"
fi
[ -f dist/cli/main.js ] || npm run build >&2

work="$(mktemp -d "${TMPDIR:-/tmp}/lethe-e2e.XXXXXX")"
port_forward_pid=""
cleanup() {
  status=$?
  if [ -n "$port_forward_pid" ]; then kill "$port_forward_pid" 2>/dev/null || true; fi
  if [ "$status" -ne 0 ] && kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    log "diagnostics:"
    kubectl get pods,preq -A -o wide >&2 || true
    kubectl -n "$ns" describe preq >&2 || true
    for sel in app.kubernetes.io/component=server app.kubernetes.io/component=operator app.kubernetes.io/name=orders; do
      kubectl -n "$ns" logs -l "$sel" --all-containers --tail=80 --prefix >&2 || true
    done
  fi
  if [ "${LETHE_E2E_KEEP:-}" = 1 ]; then
    log "keeping cluster $cluster (kind delete cluster --name $cluster)"
  else
    kind delete cluster --name "$cluster" >&2 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

k() { kubectl -n "$ns" "$@"; }
jsonpath() { k get "$1" -o "jsonpath=$2"; }

# --- 1. cluster and image ---
log "creating kind cluster $cluster"
kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
kind create cluster --name "$cluster" --wait 120s >&2
log "building $image"
docker build -t "$image" . >&2
kind load docker-image "$image" --name "$cluster" >&2

# --- 2. PostgreSQL and NATS ---
kubectl create namespace "$ns" >&2
k apply -f "$here/postgres.yaml" -f "$here/nats.yaml" >&2
k rollout status deployment/postgres --timeout=180s >&2
k rollout status deployment/nats --timeout=180s >&2

# --- 3. Secrets and Lethe ---
db_url="postgresql://lethe:lethe-e2e@postgres.$ns.svc:5432"
nats_url="nats://nats.$ns.svc:4222"
k create secret generic lethe-database --from-literal=url="$db_url/identity" >&2
k create secret generic lethe-nats --from-literal=url="$nats_url" >&2
k create secret generic lethe-artifact-key --from-literal=key="$(openssl rand -hex 32)" >&2
# TLS (on by default): a throwaway CA and a certificate for the Service's names, and localhost for
# the port-forward below.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=lethe e2e CA" \
  -keyout "$work/ca.key" -out "$work/ca.crt" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
printf 'subjectAltName=DNS:lethe-server,DNS:lethe-server.%s,DNS:lethe-server.%s.svc,DNS:lethe-server.%s.svc.cluster.local,DNS:localhost\nextendedKeyUsage=serverAuth\n' \
  "$ns" "$ns" "$ns" >"$work/server.ext"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=lethe-server" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 2 -extfile "$work/server.ext" -out "$work/server.crt" 2>/dev/null
k create secret generic lethe-tls --from-file=tls.crt="$work/server.crt" --from-file=tls.key="$work/server.key" --from-file=ca.crt="$work/ca.crt" >&2
k create serviceaccount e2e-client >&2
log "helm install lethe"
"$helm" install lethe deploy/helm/lethe --namespace "$ns" --values "$here/values.yaml" --wait --timeout 5m >&2

# --- 4. the downstream orders service with its sidecar ---
sql() { k exec -i deploy/postgres -- psql -U lethe -v ON_ERROR_STOP=1 -tA "$@"; }
sql -d orders <"$here/orders-schema.sql" >/dev/null
k create secret generic orders-db --from-literal=url="$db_url/orders" >&2
k create secret generic orders-lethe --from-literal=nats-url="$nats_url" --from-literal=hash-key="$(openssl rand -hex 32)" >&2
k create configmap orders-lethe-datamap --from-file=datamap.yaml=test/fixtures/downstream/orders.yaml >&2
sed -e 's|image: example.com/orders:1.4.2|image: registry.k8s.io/pause:3.10|' -e "s|image: lethe:0.1.0|image: $image|" \
  deploy/helm/lethe/examples/sidecar-snippet.yaml | k apply -f - >&2
k rollout status deployment/orders --timeout=180s >&2

# Applies a PrivacyRequest and waits for it to succeed: name type subject reason.
request_and_wait() {
  log "$2 $3 (PrivacyRequest $1)"
  printf 'apiVersion: privacy.lethe.dev/v1alpha1\nkind: PrivacyRequest\nmetadata: {name: %s}\nspec: {type: %s, subjectId: %s, reason: "%s", requestedBy: e2e-ticket-1}\n' \
    "$1" "$2" "$3" "$4" | k apply -f - >&2
  k wait --for=jsonpath='{.status.phase}'=Succeeded "preq/$1" --timeout="$wait_for" >&2 ||
    die "the $2 request did not reach Succeeded (phase: $(jsonpath "preq/$1" '{.status.phase}'))"
}

# --- 5. Forget ---
request_and_wait forget-user-123 Forget user-id-123 'GDPR Right to be Forgotten'
purged="$(jsonpath preq/forget-user-123 '{.status.downstream[?(@.service=="orders")].state}')"
[ "$purged" = Purged ] || die "status.downstream does not show orders as Purged: '$purged'"
[ -n "$(jsonpath preq/forget-user-123 '{.status.downstream[?(@.service=="orders")].purgedAt}')" ] ||
  die "status.downstream has no purgedAt for orders"
email="$(sql -d identity -c "SELECT email FROM users WHERE id = 'user-id-123'")"
[[ "$email" == anonymized-*@deleted.local ]] || die "identity database: users.email is '$email', not anonymized"
left="$(sql -d orders -c "SELECT count(*) FROM shipping_addresses s JOIN orders o ON o.id = s.order_id WHERE o.user_id = 'user-id-123'")"
[ "$left" = 0 ] || die "orders database: $left shipping addresses of user-id-123 left"
phones="$(sql -d orders -c "SELECT count(*) FROM orders WHERE user_id = 'user-id-123' AND phone IS NOT NULL")"
[ "$phones" = 0 ] || die "orders database: $phones orders of user-id-123 still have a phone number"
log "Forget: Succeeded, orders confirmed the purge, both databases anonymized"

# --- 6. Export ---
request_and_wait export-member-456 Export member-user-id-456 'GDPR Art. 15 access request'
request_id="$(jsonpath preq/export-member-456 '{.status.requestId}')"
want_sha="$(jsonpath preq/export-member-456 '{.status.artifact.sha256}')"
if [ -z "$request_id" ] || [ -z "$want_sha" ]; then die "status.requestId or status.artifact.sha256 is empty"; fi

k port-forward svc/lethe-server 0:50051 >"$work/port-forward.log" 2>&1 &
port_forward_pid=$!
for _ in $(seq 1 50); do
  port="$(sed -nE 's/^Forwarding from 127\.0\.0\.1:([0-9]+).*/\1/p' "$work/port-forward.log" | head -n1)"
  [ -n "$port" ] && break
  sleep 0.2
done
[ -n "${port:-}" ] || die "kubectl port-forward did not start: $(cat "$work/port-forward.log")"
LETHE_TOKEN="$(k create token e2e-client --audience "$(jsonpath deployment/lethe-server '{.spec.template.spec.containers[0].env[?(@.name=="LETHE_SERVICE_ACCOUNT_AUDIENCE")].value}')")" \
  node bin/lethe.js export --request "$request_id" --server "localhost:$port" --tls-ca "$work/ca.crt" -o "$work/export.json" >&2
got_sha="$(sha256sum "$work/export.json" | cut -d' ' -f1)"
[ "$got_sha" = "$want_sha" ] || die "the artifact's SHA-256 is $got_sha, status.artifact.sha256 says $want_sha"
grep -q '"user_id":"member-user-id-456"' "$work/export.json" || die "the artifact is not member-user-id-456's export"
log "Export: Succeeded, artifact fetched, SHA-256 $got_sha matches status.artifact.sha256"

# --- 7. uninstall: the CRD and the requests stay ---
"$helm" uninstall lethe --namespace "$ns" --wait >&2
kubectl get crd privacyrequests.privacy.lethe.dev >/dev/null || die "helm uninstall deleted the CRD"
[ "$(k get preq -o name | wc -l)" -eq 2 ] || die "the PrivacyRequests did not survive helm uninstall"
log "PASSED: Forget and Export end to end on kind; helm uninstall kept the CRD and the requests"
