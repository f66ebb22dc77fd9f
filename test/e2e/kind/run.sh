#!/usr/bin/env bash
# Lethe end to end on a real Kubernetes cluster (kind): `npm run test:e2e`.
#
#   0. scripts/setup-kind.sh up: Docker engine, kind, the node image and every image, all built on
#      this machine and cached under ~/.cache/lethe/kind/; the network fence (iptables) that keeps
#      the cluster from reaching any address outside this machine. The cluster is NOT created when
#      the fence is missing;
#   1. creates the kind cluster; builds Lethe's image with the repository's Dockerfile and loads it
#      into the node; checks that a pod cannot reach an outside address (1.1.1.1, the machine's DNS
#      resolver, an unrouted Service IP as 10.96.0.1 is before kube-proxy runs);
#   2. the namespace enforces the restricted Pod Security level; PostgreSQL and NATS (Debian's
#      packages) run there;
#   3. the Secrets (a TLS certificate from a throwaway CA: TLS on, the chart's default) and
#      `helm install` of deploy/helm/lethe with values.yaml (demo data on), the README's commands;
#   4. the downstream "orders" service with the purge sidecar (deploy/helm/lethe/examples/sidecar-snippet.yaml);
#   5. `kubectl get preq` shows the printer columns, `kubectl explain privacyrequest.spec` works;
#   6. a Forget PrivacyRequest reaches Succeeded with the orders purge confirmed; both databases;
#      (7b. a Restrict with basis Objection reaches the orders sidecar's lethe_processing_flags;)
#   7. an Export PrivacyRequest; its artifact is fetched with `lethe export --request` through
#      `kubectl port-forward` and its SHA-256 checked against status.artifact.sha256;
#   8. the operator's leader pod is deleted while requests are in flight: another replica takes
#      the Lease and every request succeeds exactly once (one ledger entry each);
#   9. `helm upgrade` to a changed value while a client pod sends Forgets through the Service: no
#      call fails;
#  10. every pod of the namespace ran under the restricted level; `helm uninstall` keeps the CRD
#      and the requests; then the cluster is deleted and setup-kind.sh down undoes what it started
#      (on any exit; LETHE_E2E_KEEP=1 keeps the cluster, the fence and dockerd).
#
# On failure: the pods' state, the events and the last log lines of every container.
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

t0=$SECONDS
log() { printf 'e2e-kind [%4ds]: %s\n' "$((SECONDS - t0))" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
# phase NAME: logs the end of the previous phase with its duration, then NAME.
phase_name="" phase_start=$SECONDS
phase() {
  [ -z "$phase_name" ] || log "-- $phase_name: $((SECONDS - phase_start)) s"
  phase_name="$1" phase_start=$SECONDS
  log "== $1"
}

# --- where it cannot run, say so and test nothing ---
reason=""
if [ "$(id -u)" != 0 ]; then
  reason="the set-up needs root (dockerd, iptables, debootstrap)"
elif ! command -v apt-get >/dev/null 2>&1 || ! command -v go >/dev/null 2>&1; then
  reason="the set-up needs a Debian machine with Go (apt-get and go)"
fi
if [ -n "$reason" ]; then
  log "NOT RUN: $reason."
  log "The kind end-to-end test did NOT run on this machine: no cluster was created and nothing was tested."
  exit "$EXIT_NOT_RUN"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/lethe-e2e.XXXXXX")"
env_file="" port_forward_pid="" cluster_created=0
export KUBECONFIG="$work/kubeconfig"

diagnostics() {
  log "diagnostics (pods, events, the last log lines of each container):"
  kubectl get nodes,pods,preq,lease -A -o wide >&2 || true
  kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 60 >&2 || true
  kubectl -n "$ns" describe preq >&2 2>/dev/null | tail -n 80 || true
  local pod c
  for pod in $(kubectl get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{end}' 2>/dev/null); do
    for c in $(kubectl -n "${pod%%/*}" get pod "${pod#*/}" -o jsonpath='{.spec.initContainers[*].name} {.spec.containers[*].name}' 2>/dev/null); do
      printf -- '--- %s [%s]\n' "$pod" "$c" >&2
      kubectl -n "${pod%%/*}" logs "${pod#*/}" -c "$c" --tail=40 >&2 2>/dev/null || true
    done
  done
}

cleanup() {
  local status=$?
  set +e
  [ -z "$port_forward_pid" ] || kill "$port_forward_pid" 2>/dev/null
  if [ "$status" -ne 0 ] && [ "$cluster_created" = 1 ]; then diagnostics; fi
  if [ "${LETHE_E2E_KEEP:-}" = 1 ]; then
    log "keeping cluster $cluster (KUBECONFIG=$KUBECONFIG; kind delete cluster --name $cluster; scripts/setup-kind.sh down $env_file)"
    exit "$status"
  fi
  if [ "$cluster_created" = 1 ]; then
    timeout 120 "$LETHE_KIND" delete cluster --name "$cluster" >&2 && log "cluster $cluster deleted"
  fi
  [ -z "$env_file" ] || scripts/setup-kind.sh down "$env_file"
  rm -rf "$work"
  log "$([ "$status" = 0 ] && echo PASSED || echo "FAILED (exit $status)") in $((SECONDS - t0)) s"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 0. set-up (cached) ---
phase "set-up (scripts/setup-kind.sh up)"
# Known before `up` runs: `down` then undoes even a half-finished `up` (the fence, dockerd).
env_file="$(scripts/setup-kind.sh env-path)"
scripts/setup-kind.sh up >/dev/null
# shellcheck disable=SC1090
. "$env_file"
PATH="$(dirname "$LETHE_KUBECTL"):$(dirname "$LETHE_KIND"):$PATH"
export PATH
helm="$(scripts/setup-helm.sh | tail -n1)"
k() { kubectl -n "$ns" "$@"; }
jsonpath() { k get "$1" -o "jsonpath=$2"; }
# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 2 s, at most SECONDS.
wait_until() {
  local limit="$1" what="$2" deadline=$((SECONDS + $1)); shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${limit}s waiting for $what"
    sleep 2
  done
}

# --- 1. image, cluster, fence ---
# The repository's Dockerfile, as the README builds it (its FROM image is the one setup-kind.sh
# built here; `npm ci` in the build container reaches the npm registry, as on any machine).
phase "Lethe's image (docker build with the repository's Dockerfile)"
# The CLI that fetches the export runs from dist/: built from this tree, as the image is.
npm run build >&2
DOCKER_BUILDKIT=0 timeout 1200 docker build -t "$image" . >"$work/docker-build.log" 2>&1 ||
  { tail -n 40 "$work/docker-build.log" >&2; die "docker build of $image failed"; }

phase "cluster"
scripts/setup-kind.sh fence-check || die "the network fence (iptables chain $LETHE_KIND_FENCE_CHAIN in DOCKER-USER) is not in place: refusing to create a cluster"
"$LETHE_KIND" delete cluster --name "$cluster" >/dev/null 2>&1 || true
cluster_created=1
timeout 300 "$LETHE_KIND" create cluster --name "$cluster" --image "$LETHE_KIND_NODE_IMAGE" \
  --config "$here/kind-config.yaml" --kubeconfig "$KUBECONFIG" --wait 120s >&2
node_container="$cluster-control-plane"
kubectl wait --for=condition=Ready node --all --timeout=120s >&2
kubectl -n kube-system rollout status deployment/coredns --timeout=180s >&2
kubectl -n kube-system rollout status daemonset/kube-proxy --timeout=120s >&2

docker save "$image" | timeout 300 docker exec -i "$node_container" \
  ctr --namespace=k8s.io images import --all-platforms --digests --snapshotter=overlayfs - >/dev/null
log "$image loaded into $node_container"

phase "fence: a pod cannot reach an address outside this machine"
drops_before="$(iptables -w 10 -L "$LETHE_KIND_FENCE_CHAIN" -v -x -n | awk '$3 == "DROP" {print $1}')"
resolver="$(awk '$1 == "nameserver" {print $2; exit}' /etc/resolv.conf)"
# 10.96.0.99 is in the Service range but no Service has it: no kube-proxy rule rewrites it, as for
# 10.96.0.1 in the first seconds of a cluster; such packets leave the node like any outside address.
probe_targets=(1.1.1.1:443 10.96.0.99:443)
[ -z "$resolver" ] || case "$resolver" in 127.*) ;; *) probe_targets+=("$resolver:53") ;; esac
kubectl create namespace e2e-fence >&2
kubectl -n e2e-fence run netprobe --image=local/netprobe:e2e --image-pull-policy=Never --restart=Never -- "${probe_targets[@]}" >&2
wait_until 90 "the netprobe pod to finish" bash -c "kubectl -n e2e-fence get pod netprobe -o jsonpath='{.status.phase}' | grep -qE 'Succeeded|Failed'"
kubectl -n e2e-fence logs netprobe >&2
[ "$(kubectl -n e2e-fence get pod netprobe -o jsonpath='{.status.phase}')" = Succeeded ] ||
  die "a pod reached an address outside this machine: the fence does not hold"
drops_after="$(iptables -w 10 -L "$LETHE_KIND_FENCE_CHAIN" -v -x -n | awk '$3 == "DROP" {print $1}')"
[ "$drops_after" -gt "$drops_before" ] || die "the probe's packets were not dropped by the fence (DROP counter $drops_before -> $drops_after)"
log "fence: ${probe_targets[*]} blocked; the fence dropped $((drops_after - drops_before)) packets"
kubectl delete namespace e2e-fence --wait=false >&2

# --- 2. the namespace (restricted), PostgreSQL and NATS ---
phase "namespace, PostgreSQL, NATS"
kubectl create namespace lethe >&2
kubectl label namespace lethe pod-security.kubernetes.io/enforce=restricted >&2
# The level is enforced: a privileged pod is refused.
if k run psa-check --image=local/netprobe:e2e --image-pull-policy=Never --restart=Never --privileged --dry-run=server >/dev/null 2>"$work/psa.err"; then
  die "the namespace admitted a privileged pod: the restricted level is not enforced"
fi
grep -q 'violates PodSecurity "restricted' "$work/psa.err" || die "a privileged pod was refused, but not by Pod Security: $(cat "$work/psa.err")"
for f in postgres nats; do
  sed -e "s|LETHE_E2E_SERVICES_IMAGE|$LETHE_KIND_SERVICES_IMAGE|" -e "s|LETHE_E2E_SERVICES_UID|$LETHE_KIND_SERVICES_UID|" "$here/$f.yaml" | k apply -f - >&2
done
k rollout status deployment/postgres --timeout=180s >&2
k rollout status deployment/nats --timeout=180s >&2

# --- 3. Secrets and Lethe (the README's "Install on Kubernetes" commands) ---
phase "Secrets, helm install"
db_url="postgresql://lethe:lethe-e2e@postgres.$ns.svc:5432"
nats_url="nats://nats.$ns.svc:4222"
kubectl -n lethe create secret generic lethe-database --from-literal=url="$db_url/identity" >&2
kubectl -n lethe create secret generic lethe-nats --from-literal=url="$nats_url" >&2
kubectl -n lethe create secret generic lethe-artifact-key --from-literal=key="$(openssl rand -hex 32)" >&2
# TLS (on by default): a throwaway CA and a certificate for the Service's names.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=lethe e2e CA" \
  -keyout "$work/ca.key" -out "$work/ca.crt" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
printf 'subjectAltName=DNS:lethe-server,DNS:lethe-server.%s,DNS:lethe-server.%s.svc,DNS:lethe-server.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
  "$ns" "$ns" "$ns" >"$work/server.ext"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=lethe-server" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 2 -extfile "$work/server.ext" -out "$work/server.crt" 2>/dev/null
(cd "$work" && kubectl -n lethe create secret generic lethe-tls \
  --from-file=tls.crt=server.crt --from-file=tls.key=server.key --from-file=ca.crt=ca.crt) >&2
# The export key: the server signs export requests to the sidecars with it; the sidecars hold its public half.
openssl genpkey -algorithm ed25519 -out "$work/export-signing-key.pem" 2>/dev/null
openssl pkey -in "$work/export-signing-key.pem" -pubout -out "$work/export-signing-key.pub.pem"
kubectl -n lethe create secret generic lethe-export-key --from-file=export-signing-key.pem="$work/export-signing-key.pem" >&2
kubectl -n lethe create serviceaccount privacy-officer >&2
"$helm" install lethe deploy/helm/lethe --namespace lethe --values "$here/values.yaml" --timeout 5m >&2
kubectl -n lethe rollout status deployment/lethe-server --timeout=300s >&2
kubectl -n lethe rollout status deployment/lethe-operator --timeout=300s >&2
[ "$(jsonpath deployment/lethe-server '{.spec.template.spec.containers[0].env[?(@.name=="LETHE_TLS_CERT")].value}')" != "" ] ||
  die "the server runs without TLS"

# --- 4. the downstream orders service with its sidecar ---
phase "orders service with the purge sidecar"
sql() { k exec -i deploy/postgres -- psql -U lethe -v ON_ERROR_STOP=1 -tA "$@"; }
sql -d orders <"$here/orders-schema.sql" >/dev/null
k create secret generic orders-db --from-literal=url="$db_url/orders" >&2
k create secret generic orders-lethe --from-literal=nats-url="$nats_url" --from-literal=hash-key="$(openssl rand -hex 32)" >&2
k create configmap orders-lethe-datamap --from-file=datamap.yaml=test/fixtures/downstream/orders.yaml >&2
k create configmap lethe-export-key --from-file=export-signing-key.pub.pem="$work/export-signing-key.pub.pem" >&2
sed -e 's|image: example.com/orders:1.4.2|image: registry.k8s.io/pause:3.10|' -e "s|image: lethe:0.1.0|image: $image|" \
  deploy/helm/lethe/examples/sidecar-snippet.yaml | k apply -f - >&2
k rollout status deployment/orders --timeout=180s >&2

# --- 5. the CRD as kubectl shows it ---
phase "kubectl get preq / explain"
kubectl explain privacyrequest.spec >"$work/explain.txt" || die "kubectl explain privacyrequest.spec failed"
grep -q 'subjectId' "$work/explain.txt" || die "kubectl explain privacyrequest.spec does not describe subjectId"

# Applies a PrivacyRequest: name type subject reason.
request() {
  printf 'apiVersion: privacy.lethe.dev/v1alpha1\nkind: PrivacyRequest\nmetadata: {name: %s}\nspec: {type: %s, subjectId: %s, reason: "%s", requestedBy: e2e-ticket-1}\n' \
    "$1" "$2" "$3" "$4" | kubectl apply -n lethe -f - >&2
}
wait_succeeded() {
  k wait --for=jsonpath='{.status.phase}'=Succeeded "preq/$1" --timeout="$wait_for" >&2 ||
    die "PrivacyRequest $1 did not reach Succeeded (phase: $(jsonpath "preq/$1" '{.status.phase}'))"
}

# --- 6. Forget ---
phase "Forget"
request forget-user-123 Forget user-id-123 'GDPR Right to be Forgotten'
kubectl get preq -n lethe >"$work/preq.txt"
head -n1 "$work/preq.txt" | grep -qE '^NAME +TYPE +SUBJECT +PHASE +DUE +AGE$' ||
  die "kubectl get preq does not show the printer columns: $(head -n1 "$work/preq.txt")"
wait_succeeded forget-user-123
kubectl get preq -n lethe >&2
purged="$(jsonpath preq/forget-user-123 '{.status.downstream[?(@.service=="orders")].state}')"
[ "$purged" = Purged ] || die "status.downstream does not show orders as Purged: '$purged'"
[ -n "$(jsonpath preq/forget-user-123 '{.status.downstream[?(@.service=="orders")].purgedAt}')" ] ||
  die "status.downstream has no purgedAt for orders"
email="$(sql -d identity -c "SELECT email FROM users WHERE id = 'user-id-123'")"
[[ "$email" == anonymized-*@deleted.local ]] || die "identity database: users.email of user-id-123 is not anonymized"
left="$(sql -d orders -c "SELECT count(*) FROM shipping_addresses s JOIN orders o ON o.id = s.order_id WHERE o.user_id = 'user-id-123'")"
[ "$left" = 0 ] || die "orders database: $left shipping addresses of user-id-123 left"
phones="$(sql -d orders -c "SELECT count(*) FROM orders WHERE user_id = 'user-id-123' AND phone IS NOT NULL")"
[ "$phones" = 0 ] || die "orders database: $phones orders of user-id-123 still have a phone number"
log "Forget: Succeeded, orders confirmed the purge, both databases anonymized"

# --- 7. Export (the README's commands) ---
phase "Export"
request export-member-456 Export member-user-id-456 'GDPR Art. 15 access request'
kubectl -n lethe wait --for=jsonpath='{.status.phase}'=Succeeded preq/export-member-456 --timeout=5m >&2
request_id="$(kubectl -n lethe get preq export-member-456 -o jsonpath='{.status.requestId}')"
want_sha="$(jsonpath preq/export-member-456 '{.status.artifact.sha256}')"
if [ -z "$request_id" ] || [ -z "$want_sha" ]; then die "status.requestId or status.artifact.sha256 is empty"; fi
# A free local port rather than the README's 50051, which a developer's own server may hold.
kubectl -n lethe port-forward svc/lethe-server 0:50051 >"$work/port-forward.log" 2>&1 &
port_forward_pid=$!
port=""
for _ in $(seq 1 50); do
  port="$(sed -nE 's/^Forwarding from 127\.0\.0\.1:([0-9]+).*/\1/p' "$work/port-forward.log" | head -n1)"
  [ -n "$port" ] && break
  sleep 0.2
done
[ -n "$port" ] || die "kubectl port-forward did not start: $(cat "$work/port-forward.log")"
kubectl -n lethe get secret lethe-tls -o jsonpath='{.data.ca\.crt}' | base64 -d >"$work/lethe-ca.crt"
LETHE_TOKEN="$(kubectl -n lethe create token privacy-officer --audience lethe)" \
  timeout 120 node bin/lethe.js export --request "$request_id" -o "$work/export.json" --server "localhost:$port" \
  --tls-ca "$work/lethe-ca.crt" --tls-server-name lethe-server.lethe.svc >&2
kill "$port_forward_pid" 2>/dev/null || true
port_forward_pid=""
got_sha="$(sha256sum "$work/export.json" | cut -d' ' -f1)"
[ "$got_sha" = "$want_sha" ] || die "the artifact's SHA-256 is $got_sha, status.artifact.sha256 says $want_sha"
grep -q '"user_id":"member-user-id-456"' "$work/export.json" || die "the artifact is not member-user-id-456's export"
# The orders service contributed its copy through its sidecar (the e2e seeds no orders for this
# subject: a complete, empty part).
exported="$(jsonpath preq/export-member-456 '{.status.downstream[?(@.service=="orders")].state}')"
[ "$exported" = Exported ] || die "status.downstream does not show orders as Exported: '$exported'"
grep -q '"downstream_export":{"orders":{"status":"complete"' "$work/export.json" || die "the artifact lacks the orders service's complete part"
log "Export: Succeeded, artifact fetched over TLS, SHA-256 matches status.artifact.sha256, orders contributed its part"

# --- 7b. Restrict: an objection reaches the orders service's flags ---
phase "Restrict"
printf 'apiVersion: privacy.lethe.dev/v1alpha1\nkind: PrivacyRequest\nmetadata: {name: object-owner-2}\nspec: {type: Restrict, subjectId: owner-user-id-2, purposes: [marketing], basis: Objection, requestedBy: e2e-ticket-2}\n' |
  kubectl apply -n lethe -f - >&2
wait_succeeded object-owner-2
applied="$(jsonpath preq/object-owner-2 '{.status.downstream[?(@.service=="orders")].state}')"
[ "$applied" = Applied ] || die "status.downstream does not show orders as Applied: '$applied'"
flags="$(sql -d orders -c "SELECT restricted, objected, consent FROM lethe_processing_flags WHERE subject_id = 'owner-user-id-2' AND purpose = 'marketing'")"
[ "$flags" = "f|t|none" ] || die "orders database: lethe_processing_flags of owner-user-id-2 for marketing is '$flags', not objected"
log "Restrict: Succeeded, orders applied the objection to its lethe_processing_flags"

# Subjects for the next two phases: rows in the identity database's users table.
add_subjects() { # prefix count
  sql -d identity -c "INSERT INTO users (id, email) SELECT '$1-' || i, '$1-' || i || '@example.test' FROM generate_series(1, $2) AS i" >/dev/null
}

# --- 8. leader failover with requests in flight ---
phase "operator leader failover"
failover_n=8
add_subjects e2e-failover "$failover_n"
leader="$(jsonpath lease/lethe-operator '{.spec.holderIdentity}')"
[ -n "$leader" ] || die "no operator holds the Lease lethe-operator"
k get pod "$leader" >/dev/null 2>&1 || die "the Lease holder '$leader' is not a pod of the namespace"
for i in $(seq 1 "$failover_n"); do
  request "failover-$i" Forget "e2e-failover-$i" 'e2e leader failover'
done
pending="$(k get preq -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}' | awk '$1 ~ /^failover-/ && $2 != "Succeeded"' | wc -l)"
log "deleting the leader pod $leader with $pending of $failover_n requests not yet Succeeded"
[ "$pending" -gt 0 ] || log "warning: every request had already succeeded before the leader was deleted"
k delete pod "$leader" --wait=false >&2
wait_until 120 "another replica to take the Lease" bash -c \
  "h=\$(kubectl -n $ns get lease lethe-operator -o jsonpath='{.spec.holderIdentity}'); [ -n \"\$h\" ] && [ \"\$h\" != '$leader' ]"
log "new leader: $(jsonpath lease/lethe-operator '{.spec.holderIdentity}')"
for i in $(seq 1 "$failover_n"); do wait_succeeded "failover-$i"; done
dupes="$(sql -d identity -c "SELECT count(*) FROM (SELECT subject_id FROM lethe_privacy_requests WHERE subject_id LIKE 'e2e-failover-%' GROUP BY subject_id HAVING count(*) <> 1) d")"
total="$(sql -d identity -c "SELECT count(DISTINCT subject_id) FROM lethe_privacy_requests WHERE subject_id LIKE 'e2e-failover-%'")"
[ "$dupes" = 0 ] && [ "$total" = "$failover_n" ] ||
  die "ledger: $total of $failover_n subjects recorded, $dupes not exactly once"
log "failover: every request Succeeded, exactly one ledger entry each"

# --- 9. helm upgrade while Forgets are being sent ---
phase "helm upgrade under load"
upgrade_max=200
for w in 1 2 3; do add_subjects "e2e-upgrade-$w" "$upgrade_max"; done
sed -e "s|LETHE_E2E_IMAGE|$image|" -e "s|LETHE_E2E_COUNT|$upgrade_max|" "$here/forget-client.yaml" | k apply -f - >&2
wait_until 120 "the forget client to start" bash -c "kubectl -n $ns get pod forget-client -o jsonpath='{.status.phase}' | grep -qE 'Running|Succeeded'"
sleep 3
server_rs_before="$(jsonpath deployment/lethe-server '{.metadata.generation}')"
"$helm" upgrade lethe deploy/helm/lethe --namespace lethe --values "$here/values.yaml" --set server.logLevel=info --timeout 5m >&2
kubectl -n lethe rollout status deployment/lethe-server --timeout=300s >&2
kubectl -n lethe rollout status deployment/lethe-operator --timeout=300s >&2
[ "$(jsonpath deployment/lethe-server '{.metadata.generation}')" != "$server_rs_before" ] || die "helm upgrade did not roll the server"
# More calls against the new pods, then the client stops.
sleep 10
k exec forget-client -- touch /tmp/stop 2>/dev/null || true # (it may have stopped at its maximum already)
wait_until 600 "the forget client to finish" bash -c "kubectl -n $ns get pod forget-client -o jsonpath='{.status.phase}' | grep -qE 'Succeeded|Failed'"
k logs forget-client | tail -n 5 >&2
[ "$(jsonpath pod/forget-client '{.status.phase}')" = Succeeded ] || die "calls failed during helm upgrade (see the forget-client log above)"
summary="$(k logs forget-client | grep '^upgrade client: ')"
calls="$(sed -nE 's/^upgrade client: ([0-9]+) of ([0-9]+) forgets succeeded, 0 failed$/\2/p' <<<"$summary")"
[ -n "$calls" ] && [ "$calls" -ge 10 ] || die "the forget client did not report at least 10 calls, none failed: '$summary'"
completed_upgrade_forgets() { sql -d identity -c "SELECT count(*) FROM lethe_privacy_requests WHERE subject_id LIKE 'e2e-upgrade-%' AND state = 'completed'"; }
all_upgrade_forgets_completed() { [ "$(completed_upgrade_forgets)" = "$calls" ]; }
# Completed once the orders sidecar has confirmed each purge.
wait_until 180 "the ledger to show the $calls Forgets completed (orders confirmed)" all_upgrade_forgets_completed
done_n="$(completed_upgrade_forgets)"
[ "$done_n" = "$calls" ] || die "the forget client made $calls calls, the ledger has $done_n completed Forgets"
log "helm upgrade: $calls Forgets through the Service during the rollout, none failed, $done_n completed in the ledger"

# --- 10. Pod Security, uninstall ---
phase "Pod Security, helm uninstall"
[ "$(kubectl get namespace lethe -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')" = restricted ] ||
  die "the namespace does not enforce the restricted level"
k get pods -o custom-columns=NAME:.metadata.name,PHASE:.status.phase --no-headers >&2
not_ok="$(k get pods --no-headers -o custom-columns=P:.status.phase | grep -vcE 'Running|Succeeded' || true)"
[ "$not_ok" = 0 ] || die "$not_ok pods of the namespace are not Running"
helm_release_pods="$(k get pods -l app.kubernetes.io/instance=lethe --no-headers | wc -l)"
[ "$helm_release_pods" -ge 4 ] || die "expected the 2 servers and 2 operators in the namespace, found $helm_release_pods pods"
"$helm" uninstall lethe --namespace lethe --wait >&2
kubectl get crd privacyrequests.privacy.lethe.dev >/dev/null || die "helm uninstall deleted the CRD"
[ "$(k get preq -o name | wc -l)" -eq $((3 + failover_n)) ] || die "the PrivacyRequests did not survive helm uninstall"
# The README's deliberate removal of the CRD, and with it every request.
kubectl delete crd privacyrequests.privacy.lethe.dev --timeout=120s >&2
phase "done"
log "PASSED: Forget, Export, Restrict, leader failover, helm upgrade under load on kind (restricted Pod Security, TLS, fenced network)"
