#!/usr/bin/env bash
# The chaos harness's kubernetes mode: one scenario against a release of the
# chart (deploy/helm/certautopilot) on a real cluster, under a load client
# that writes and reads projects through the API's load balancer. Faults are
# what kubectl can do portably; figures come from the API (the audit log,
# the projects written) and from an api pod's /metrics. See chaos/README.md.
# It has never run against a cluster from this repository's machines.
set -Eeuo pipefail

SCENARIOS=(rolling-restart rolling-upgrade zone-loss worker-partition leader-pause
  db-stepdown-storm db-kill kill-storm)
# Pause between two rounds of the load client (one write, one read each).
LOAD_PAUSE_SECS=0.2
# Load before the fault, and at least this long after it.
WARMUP_SECS=10
TAIL_SECS=10
# Background work must be consistent again within 5 minutes of the fault.
RECOVERY_LIMIT_SECS=300
# Recovered: no runnable job waiting longer, no renewal overdue by longer.
QUEUE_SLACK_SECS=10
RENEWAL_SLACK_SECS=60
KILL_EVERY_SECS=5
STEPDOWN_EVERY_SECS=5
ROLLOUT_TIMEOUT=600s

usage() {
  cat <<EOF
usage: chaos/kubernetes/run.sh SCENARIO [--duration S] [--report FILE] [--namespace NS]
         [--release NAME] [--api URL] [--token-file F] [--zone Z] [--mongo-pod [NS/]POD]
         [--image-tag TAG]

scenarios:
  rolling-restart    kubectl rollout restart of api, then worker, then scheduler, each
                     waited for; must hold: 0 failed issue-certificate jobs, every request 2xx
  rolling-upgrade    helm upgrade of the release to --image-tag TAG (migrate hook, then the
                     Deployments; the scheduler waits for the rest); must hold: as rolling-restart
  zone-loss          every node of one zone (--zone, or the zone of an api pod) cordoned and
                     drained for S seconds, then uncordoned; must hold: no acknowledged write
                     lost, availability >= 99.95 %, renewals continue, recovery within 300 s
  worker-partition   not supported in kubernetes mode (exit 3)
  leader-pause       not supported in kubernetes mode (exit 3)
  db-stepdown-storm  rs.stepDown() on the primary every ${STEPDOWN_EVERY_SECS} s for S seconds, through
                     kubectl exec into --mongo-pod; must hold: 0 failed jobs, 0 5xx
  db-kill            every pod of --mongo-pod's StatefulSet force-deleted, then waited for;
                     must hold: no acknowledged write lost, audit verify exit 0
  kill-storm         a random api, worker or scheduler pod force-deleted every ${KILL_EVERY_SECS} s for
                     S seconds; must hold: no dead job, every certificate issued again, no
                     certificate newly failed, recovery within 300 s

options:
  --duration S       how long a storm or a lost zone lasts; rolling scenarios last as long as
                     their rollouts and at least S (default 60)
  --report FILE      also write the report as JSON
  --namespace NS     the release's namespace (default: kubectl's current one)
  --release NAME     the Helm release (default certautopilot)
  --api URL          the API as clients reach it: the Ingress or LoadBalancer (required)
  --token-file F     a global admin API token (required)
  --mongo-pod P      a member of the database's replica set, for the db-* scenarios
  --image-tag TAG    the image tag rolling-upgrade upgrades to

Exit: 0 every check held, 1 one failed, 2 usage, 3 scenario not supported, 4 the harness failed.
EOF
}

fail_usage() { echo "chaos: $*" >&2; echo "chaos: see --help" >&2; exit 2; }
unsupported() { echo "chaos: $scenario: not supported in kubernetes mode: $*" >&2; exit 3; }
die() { echo "chaos: $*" >&2; exit 4; }

scenario="" duration=60 report="" namespace="" release=certautopilot api="" token_file=""
zone="" mongo_pod="" image_tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --duration | --report | --namespace | --release | --api | --token-file | --zone | --mongo-pod | --image-tag)
      [ $# -ge 2 ] || fail_usage "$1 needs a value"
      case "$1" in
        --duration) duration="$2" ;;
        --report) report="$2" ;;
        --namespace) namespace="$2" ;;
        --release) release="$2" ;;
        --api) api="${2%/}" ;;
        --token-file) token_file="$2" ;;
        --zone) zone="$2" ;;
        --mongo-pod) mongo_pod="$2" ;;
        --image-tag) image_tag="$2" ;;
      esac
      shift 2 ;;
    -*) fail_usage "unknown option $1" ;;
    *) [ -z "$scenario" ] || fail_usage "one scenario at a time (got $scenario and $1)"
      scenario="$1"; shift ;;
  esac
done
[ -n "$scenario" ] || fail_usage "no scenario given (one of: ${SCENARIOS[*]})"
case " ${SCENARIOS[*]} " in
  *" $scenario "*) ;;
  *) fail_usage "unknown scenario '$scenario' (one of: ${SCENARIOS[*]})" ;;
esac
[[ $duration =~ ^[1-9][0-9]*$ ]] || fail_usage "--duration must be a whole number of seconds, not '$duration'"

# What kubectl cannot do portably, refused before anything is touched.
case "$scenario" in
  worker-partition) unsupported "cutting one pod off from the database needs an egress NetworkPolicy the CNI enforces on established connections, and the database's addresses; neither is portable" ;;
  leader-pause) unsupported "SIGSTOP of the leader needs a signal sent inside its container, and the image has no shell or kill (kubectl debug with a shared process namespace is not available everywhere)" ;;
  db-stepdown-storm | db-kill) [ -n "$mongo_pod" ] || unsupported "needs --mongo-pod: a database outside the cluster (a managed service) cannot be faulted with kubectl" ;;
  rolling-upgrade) [ -n "$image_tag" ] || fail_usage "rolling-upgrade needs --image-tag TAG (the release to upgrade to)" ;;
esac
[ -n "$api" ] || fail_usage "--api URL is required (the API through its load balancer)"
[ -n "$token_file" ] || fail_usage "--token-file is required (a global admin token)"
[ -r "$token_file" ] || fail_usage "cannot read --token-file $token_file"
for tool in kubectl curl jq awk shuf; do
  command -v "$tool" >/dev/null 2>&1 || die "needs $tool on PATH"
done
[ "$scenario" != rolling-upgrade ] || command -v helm >/dev/null 2>&1 || die "rolling-upgrade needs helm on PATH"

trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR
kc() { if [ -n "$namespace" ]; then kubectl -n "$namespace" "$@"; else kubectl "$@"; fi; }
mongo_ns="" mongo_name="$mongo_pod"
if [[ $mongo_pod == */* ]]; then mongo_ns="${mongo_pod%%/*}" mongo_name="${mongo_pod#*/}"; fi
kc_mongo() { if [ -n "$mongo_ns" ]; then kubectl -n "$mongo_ns" "$@"; else kc "$@"; fi; }
selector() { echo "app.kubernetes.io/instance=$release,app.kubernetes.io/component=$1"; }
# The Deployment of one component (api, worker, scheduler).
deployment() {
  local name
  name="$(kc get deploy -l "$(selector "$1")" -o jsonpath='{.items[*].metadata.name}')"
  name="${name%% *}"
  [ -n "$name" ] || die "no Deployment with labels $(selector "$1")"
  echo "$name"
}
ready_pod() {
  kc get pods -l "$(selector "$1")" -o json | jq -r '[.items[] | select(.status.phase == "Running"
    and .metadata.deletionTimestamp == null
    and any(.status.conditions[]?; .type == "Ready" and .status == "True"))][0].metadata.name // empty'
}

work="$(mktemp -d)"
chmod 700 "$work"
# The token goes to curl in a header file, never on a command line.
printf 'Authorization: Bearer %s\n' "$(tr -d '[:space:]' <"$token_file")" >"$work/auth"
load_pid="" cordoned=()
# Runs from the EXIT trap (shellcheck 0.9 cannot see that).
# shellcheck disable=SC2317
cleanup() {
  trap - ERR
  touch "$work/stop"
  if [ -n "$load_pid" ]; then wait "$load_pid" 2>/dev/null || true; fi
  for node in "${cordoned[@]}"; do kubectl uncordon "$node" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One API request, its body into the file $1: prints "CODE SECONDS" (000
# when no answer came).
request() {
  local body="$1" out
  shift
  out="$(curl -sS -o "$body" -w '%{http_code} %{time_total}' --max-time 10 \
    -H @"$work/auth" -H 'Content-Type: application/json' "$@" 2>/dev/null)" || true
  echo "${out:-000 0}"
}
# A GET whose answer the report needs: retried, fails the harness if it never comes.
api_get() {
  curl -fsS --max-time 10 --retry 5 --retry-all-errors --retry-delay 2 -H @"$work/auth" "$api$1" \
    || die "GET $1 failed"
}

# The load client: one project written, then one acknowledged project read
# back, each round. Every request goes to requests (code, seconds); every 2xx
# write's id to the ledger.
load_client() {
  trap - ERR
  local n=0 out code id
  while [ ! -e "$work/stop" ]; do
    n=$((n + 1))
    out="$(request "$work/body.load" -X POST -d "{\"name\":\"chaos-$scenario-$run_id-$n\"}" "$api/v1/projects")"
    echo "$out" >>"$work/requests"
    code="${out%% *}"
    if [[ $code == 2?? ]]; then
      id="$(jq -r '.id // empty' "$work/body.load" 2>/dev/null || true)"
      if [ -n "$id" ]; then echo "$id" >>"$work/ledger"; fi
    fi
    if [ -s "$work/ledger" ]; then
      id="$(shuf -n 1 "$work/ledger")"
      request "$work/body.load" "$api/v1/projects/$id" >>"$work/requests"
    fi
    sleep "$LOAD_PAUSE_SECS"
  done
}

# An api pod's /metrics through kubectl port-forward (the kubelet's path, so
# the chart's NetworkPolicy on the metrics port does not apply). The queue,
# certificate and renewal gauges are read from the database: any pod will do.
scrape() {
  local pod port="" pf_port pf
  pod="$(ready_pod api)"
  [ -n "$pod" ] || return 1
  pf_port="$(kc get pod "$pod" -o jsonpath='{.spec.containers[0].ports[?(@.name=="metrics")].containerPort}')"
  kc port-forward "pod/$pod" ":$pf_port" >"$work/pf" 2>&1 &
  pf=$!
  for _ in $(seq 1 50); do
    port="$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$work/pf" | head -1)"
    [ -z "$port" ] || break
    sleep 0.1
  done
  local ok=0
  if [ -n "$port" ]; then curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" || ok=1; else ok=1; fi
  kill "$pf" 2>/dev/null || true
  wait "$pf" 2>/dev/null || true
  return "$ok"
}
gauge() { awk -v name="$1" '$1 == name { print $2; found = 1 } END { if (!found) print "null" }'; }

# Back to steady: every Deployment of the release fully rolled out and
# available, no certificate waiting for its first issue, no runnable job
# waiting longer than QUEUE_SLACK_SECS, no renewal overdue by more than
# RENEWAL_SLACK_SECS.
recovered() {
  local behind metrics
  behind="$(kc get deploy -l "app.kubernetes.io/instance=$release" -o json | jq '[.items[]
    | select((.status.availableReplicas // 0) < .spec.replicas or (.status.updatedReplicas // 0) < .spec.replicas)] | length')"
  [ "$behind" = 0 ] || return 1
  metrics="$(scrape 2>/dev/null)" || return 1
  awk -v now="$(date +%s)" -v qs="$QUEUE_SLACK_SECS" -v rs="$RENEWAL_SLACK_SECS" '
    /^certautopilot_certificates\{status="(pending|issuing)"\} / { if ($2 + 0 > 0) bad = 1 }
    /^certautopilot_queue_oldest_queued_seconds / { seen = 1; if ($2 + 0 > qs) bad = 1 }
    /^certautopilot_certificate_renewal_due_timestamp_seconds\{/ { if ($2 + 0 < now - rs) bad = 1 }
    END { exit !(seen && !bad) }' <<<"$metrics"
}

# The faults. Each returns when the fault is over.
roll() {
  local d
  for component in api worker scheduler; do
    d="$(deployment "$component")"
    echo "chaos: rollout restart deploy/$d" >&2
    kc rollout restart "deploy/$d" >/dev/null
    kc rollout status "deploy/$d" --timeout="$ROLLOUT_TIMEOUT" >&2
  done
}
upgrade() {
  local chart ns_args=()
  chart="$(cd "$(dirname "$0")/../../deploy/helm/certautopilot" && pwd)"
  if [ -n "$namespace" ]; then ns_args=(--namespace "$namespace"); fi
  echo "chaos: helm upgrade $release to image tag $image_tag" >&2
  # The new chart's defaults under the release's own values (Helm 3.14 or later).
  helm upgrade "$release" "$chart" "${ns_args[@]}" --reset-then-reuse-values --set "image.tag=$image_tag" \
    --wait --timeout 15m >&2
}
lose_zone() {
  local pod node
  if [ -z "$zone" ]; then
    pod="$(ready_pod api)"
    [ -n "$pod" ] || die "no ready api pod to take a zone from"
    node="$(kc get pod "$pod" -o jsonpath='{.spec.nodeName}')"
    zone="$(kubectl get node "$node" -o jsonpath='{.metadata.labels.topology\.kubernetes\.io/zone}')"
    [ -n "$zone" ] || die "node $node has no topology.kubernetes.io/zone label"
  fi
  local nodes others
  mapfile -t nodes < <(kubectl get nodes -l "topology.kubernetes.io/zone=$zone" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  others="$(kubectl get nodes -l "topology.kubernetes.io/zone,topology.kubernetes.io/zone!=$zone" -o name | wc -l)"
  [ "${#nodes[@]}" -gt 0 ] || die "no node in zone $zone"
  [ "$others" -gt 0 ] || unsupported "every node is in zone $zone: losing it loses everything"
  echo "chaos: zone $zone: cordoning and draining ${nodes[*]} for ${duration}s" >&2
  local started=$SECONDS pids=()
  for node in "${nodes[@]}"; do
    kubectl cordon "$node" >/dev/null
    cordoned+=("$node")
  done
  for node in "${nodes[@]}"; do
    kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data --timeout="${RECOVERY_LIMIT_SECS}s" \
      >"$work/drain.$node" 2>&1 &
    pids+=($!)
  done
  drain_failed=""
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || drain_failed+="${nodes[$i]} ($(tail -1 "$work/drain.${nodes[$i]}")) "
  done
  while [ $((SECONDS - started)) -lt "$duration" ]; do sleep 1; done
  for node in "${nodes[@]}"; do kubectl uncordon "$node" >/dev/null; done
  cordoned=()
}
kill_storm() {
  local end=$((SECONDS + duration)) pod
  kills=0
  while [ "$SECONDS" -lt "$end" ]; do
    pod="$(kc get pods -l "app.kubernetes.io/instance=$release,app.kubernetes.io/component in (api,worker,scheduler)" \
      -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | shuf -n 1)"
    if [ -n "$pod" ] && kc delete pod "$pod" --grace-period=0 --force --wait=false >/dev/null 2>&1; then
      kills=$((kills + 1))
    fi
    sleep "$KILL_EVERY_SECS"
  done
}
mongo_eval() { kc_mongo exec "$1" -- mongosh --quiet --eval "$2"; }
stepdown_storm() {
  local end=$((SECONDS + duration)) primary
  stepdowns=0
  while [ "$SECONDS" -lt "$end" ]; do
    # The primary's pod: the first label of its host name (a StatefulSet's
    # stable name), else the pod given.
    primary="$(mongo_eval "$mongo_name" 'db.hello().primary' 2>/dev/null | tail -1 || true)"
    primary="${primary%%:*}"
    primary="${primary%%.*}"
    if [ -z "$primary" ] || [ "$primary" = localhost ]; then primary="$mongo_name"; fi
    # The step-down closes the shell's own connection: its exit status says nothing.
    mongo_eval "$primary" 'rs.stepDown(10)' >/dev/null 2>&1 || true
    stepdowns=$((stepdowns + 1))
    sleep "$STEPDOWN_EVERY_SECS"
  done
}
kill_db() {
  local sts sel
  sts="$(kc_mongo get pod "$mongo_name" -o jsonpath='{.metadata.ownerReferences[?(@.kind=="StatefulSet")].name}')"
  [ -n "$sts" ] || unsupported "$mongo_pod belongs to no StatefulSet that would start it again"
  sel="$(kc_mongo get statefulset "$sts" -o json | jq -r '.spec.selector.matchLabels | to_entries | map("\(.key)=\(.value)") | join(",")')"
  echo "chaos: force-deleting every pod of statefulset/$sts" >&2
  kc_mongo delete pod -l "$sel" --grace-period=0 --force --wait=false >/dev/null
  sleep 5
  kc_mongo rollout status "statefulset/$sts" --timeout="$ROLLOUT_TIMEOUT" >&2
}

# Audit records after seq $1 whose action matches $2 (a prefix ending in a
# dot, or an action), as JSON lines.
audit_since() {
  local after="$1" page
  while :; do
    page="$(api_get "/v1/audit?action=$2&limit=200&after=$after")"
    jq -c '.items[]' <<<"$page"
    after="$(jq -r '.next // empty' <<<"$page")"
    [ -n "$after" ] || break
  done
}

run_id="$(date +%s)"
started_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
start=$SECONDS
# A marker project: its audit record's seq is where this run's records begin.
out="$(request "$work/body.main" -X POST -d "{\"name\":\"chaos-marker-$scenario-$run_id\"}" "$api/v1/projects")"
[[ $out == 2??\ * ]] || die "creating the marker project through $api: answered ${out%% *} (000: no answer)" \
  "$(head -c 300 "$work/body.main" 2>/dev/null || true)"
marker="$(jq -r .id "$work/body.main")"
since="$(api_get "/v1/projects/$marker/audit?action=project.created" | jq -r '.items[0].seq // empty')"
[ -n "$since" ] || die "no project.created audit record for the marker project $marker"
before="$(scrape 2>/dev/null || true)"
failed_before="$(gauge 'certautopilot_certificates{status="failed"}' <<<"$before")"

echo "chaos: $scenario against release $release${namespace:+ in $namespace}, API $api" >&2
: >"$work/requests"
: >"$work/ledger"
load_client &
load_pid=$!
sleep "$WARMUP_SECS"
fault_started=$(date +%s)
drain_failed="" kills="" stepdowns=""
case "$scenario" in
  rolling-restart) roll ;;
  rolling-upgrade) upgrade ;;
  zone-loss) lose_zone ;;
  kill-storm) kill_storm ;;
  db-stepdown-storm) stepdown_storm ;;
  db-kill) kill_db ;;
esac
fault_end=$SECONDS
echo "chaos: fault over after $((fault_end - start - WARMUP_SECS))s; waiting for recovery" >&2
recovery="null"
while [ $((SECONDS - fault_end)) -le "$RECOVERY_LIMIT_SECS" ]; do
  if recovered; then recovery=$((SECONDS - fault_end)); break; fi
  sleep 5
done
while [ $((SECONDS - start)) -lt "$duration" ] || [ $((SECONDS - fault_end)) -lt "$TAIL_SECS" ]; do sleep 1; done
touch "$work/stop"
wait "$load_pid" || true
load_pid=""
duration_secs=$((SECONDS - start))

# Every acknowledged write read back: 404 is a lost write; anything else is
# retried, and one never read counts as lost too.
acknowledged=0 checked=0 lost=0 lost_ids=()
while read -r id; do
  acknowledged=$((acknowledged + 1))
  code=000
  for _ in 1 2 3 4 5; do
    code="$(request "$work/body.main" "$api/v1/projects/$id")"
    code="${code%% *}"
    if [[ $code == 2?? || $code == 404 ]]; then break; fi
    sleep 2
  done
  checked=$((checked + 1))
  if [[ $code != 2?? ]]; then lost=$((lost + 1)); lost_ids+=("$id:$code"); fi
done <"$work/ledger"

# Requests by answer, and the p99 of their latency (sorted by sort: awk here
# may be mawk, without asort).
p99="$(awk '{ print $2 * 1000 }' "$work/requests" | sort -g | awk '{ t[NR] = $1 }
  END { if (NR == 0) { print "null"; exit } i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1; printf "%.1f\n", t[i] }')"
requests="$(awk -v p99="$p99" '{ n++; if ($1 ~ /^2/) ok++; else if ($1 == "000") err++; else { non++; if ($1 ~ /^5/) five++ } }
  END { printf "{\"total\":%d,\"ok\":%d,\"non_2xx\":%d,\"errors\":%d,\"availability\":%s,\"p99_ms\":%s,\"5xx\":%d}\n",
    n, ok, non, err, (n ? sprintf("%.6f", ok / n) : "null"), p99, five }' "$work/requests")"

audit_since "$since" "job." >"$work/jobs"
audit_since "$since" "certificate.issued" >"$work/issued"
audit_since "$since" "leader.takeover" >"$work/takeovers"
# Attempts of issue-certificate jobs that ended: run = completed + retrying +
# dead; failed = retrying + dead (an attempt that failed); dead = gave up.
jobs="$(jq -s '[.[] | select(.details.kind == "issue-certificate")] | {
  run: length,
  failed: map(select(.action == "job.retrying" or .action == "job.dead")) | length,
  dead: map(select(.action == "job.dead")) | length }' "$work/jobs")"
completed_after_fault="$(jq -s --argjson t "$fault_started" '[.[]
  | select(.details.kind == "issue-certificate" and .action == "job.completed")
  | .time // "" | sub("\\.[0-9]+"; "") | sub("\\+00:00$"; "Z") | (try fromdateiso8601 catch null)
  | select(. != null and . >= $t)] | length' "$work/jobs")"
issued="$(jq -s length "$work/issued")"
# gap_secs: the deposed leader's last renewal is not in the audit log.
takeovers="$(jq -s '[.[] | {term: .details.term, holder: .actor, gap_secs: null}]' "$work/takeovers")"
after="$(scrape 2>/dev/null || true)"
failed_after="$(gauge 'certautopilot_certificates{status="failed"}' <<<"$after")"

# The checks of the scenario: name, whether it held, what was seen.
checks="[]"
check() { checks="$(jq -c --arg n "$1" --argjson ok "$2" --arg d "$3" '. + [{name: $n, ok: $ok, detail: $d}]' <<<"$checks")"; }
holds() { if "$@"; then echo true; else echo false; fi; }
r() { jq -r "$1" <<<"$requests"; }
j() { jq -r "$1" <<<"$jobs"; }
check "no acknowledged write lost" "$(holds [ "$lost" = 0 ])" \
  "$checked of $acknowledged acknowledged writes read back, $lost lost${lost_ids[*]:+: ${lost_ids[*]:0:10}}"
case "$scenario" in
  rolling-restart | rolling-upgrade)
    check "no failed renewal job" "$(holds [ "$(j .failed)" = 0 ])" "$(j .run) issue-certificate attempts, $(j .failed) failed"
    check "every request answered 2xx" "$(holds [ "$(r .ok)" = "$(r .total)" ])" \
      "$(r .total) requests: $(r .non_2xx) non-2xx, $(r .errors) without an answer" ;;
  zone-loss)
    if [ -n "$drain_failed" ]; then check "zone drained" false "drain did not finish on: $drain_failed"; fi
    check "availability >= 99.95 %" "$(r '.availability != null and .availability >= 0.9995')" \
      "$(r .ok) of $(r .total) requests 2xx ($(r .availability))"
    check "renewals continue" "$(holds [ "$completed_after_fault" -gt 0 ])" \
      "$completed_after_fault issue-certificate jobs completed after zone $zone was lost"
    check "consistent within ${RECOVERY_LIMIT_SECS} s" "$(holds [ "$recovery" != null ])" "recovery_secs $recovery" ;;
  db-stepdown-storm)
    check "no failed job" "$(holds [ "$(j .failed)" = 0 ])" "$stepdowns step-downs; $(j .run) issue-certificate attempts, $(j .failed) failed"
    check "no 5xx" "$(r '.["5xx"] == 0 and .errors == 0')" \
      "$(r '.["5xx"]') 5xx and $(r .errors) without an answer of $(r .total) requests" ;;
  db-kill)
    if out="$(kc exec "deploy/$(deployment api)" -c api -- /usr/local/bin/certautopilot audit verify 2>&1)"; then
      check "audit chain verifies" true "$(tail -1 <<<"$out")"
    else
      check "audit chain verifies" false "$(tail -1 <<<"$out")"
    fi ;;
  kill-storm)
    check "no dead job" "$(holds [ "$(j .dead)" = 0 ])" "$kills pods force-deleted; $(j .run) issue-certificate attempts, $(j .dead) dead"
    check "every certificate issued again within ${RECOVERY_LIMIT_SECS} s" "$(holds [ "$recovery" != null ])" "recovery_secs $recovery"
    newly_failed=false
    if [ "$failed_before" != null ] && [ "$failed_after" != null ] && [ "$failed_after" -le "$failed_before" ]; then newly_failed=true; fi
    check "no certificate newly failed" "$newly_failed" "certificates failed: $failed_before before, $failed_after after" ;;
esac

result="$(jq -n --arg scenario "$scenario" --arg started_at "$started_at" --argjson duration "$duration_secs" \
  --argjson requests "$requests" --argjson acknowledged "$acknowledged" --argjson checked "$checked" \
  --argjson lost "$lost" --argjson jobs "$jobs" --argjson issued "$issued" --argjson takeovers "$takeovers" \
  --argjson recovery "$recovery" --argjson checks "$checks" '{
    scenario: $scenario, mode: "kubernetes", started_at: $started_at, duration_secs: $duration,
    requests: ($requests | del(.["5xx"])),
    writes: {acknowledged: $acknowledged, checked: $checked, lost: $lost},
    jobs: {"issue-certificate": $jobs},
    max_holders_at_once: null,
    acme: {orders_opened: null, certificates_issued: $issued},
    leader_takeovers: $takeovers, recovery_secs: $recovery,
    checks: $checks, passed: ($checks | all(.ok)) }')"
if [ -n "$report" ]; then echo "$result" >"$report"; fi

jq -r '"\(.scenario) (kubernetes) from \(.started_at), \(.duration_secs) s",
  "requests  \(.requests.total): \(.requests.ok) 2xx, \(.requests.non_2xx) non-2xx, \(.requests.errors) unanswered; availability \(.requests.availability), p99 \(.requests.p99_ms) ms",
  "writes    \(.writes.acknowledged) acknowledged, \(.writes.checked) checked, \(.writes.lost) lost",
  "jobs      issue-certificate: \(.jobs."issue-certificate" | "\(.run) run, \(.failed) failed, \(.dead) dead")",
  "acme      \(.acme.certificates_issued) certificates issued (orders opened: not readable in this mode)",
  "leaders   \(.leader_takeovers | length) takeovers\(.leader_takeovers | map(" term \(.term) by \(.holder)") | join(","))",
  "recovery  \(if .recovery_secs == null then "not within the limit" else "\(.recovery_secs) s" end)",
  (.checks[] | "\(if .ok then "ok  " else "FAIL" end)      \(.name): \(.detail)"),
  (if .passed then "PASSED" else "FAILED" end)' <<<"$result"
if [ "$(jq -r .passed <<<"$result")" = true ]; then exit 0; else exit 1; fi
