#!/usr/bin/env bash
# Measures the process runtime's budgets on a running kube-env (scripts/kube-env start):
#   - how soon after binding a pod's process runs (pods created with spec.nodeName set, so
#     creation is the binding; the process writes the time it started into a hostPath file);
#   - memory with 20 pods running at once (PSS, so pages shared between processes count once).
# Usage: tests/kube-env/measure.sh [PODS] (default 20). Prints one line per figure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KUBECTL="$ROOT/scripts/kubectl"
eval "$("$ROOT/scripts/kube-env" env)"
PODS="${1:-20}"
NS="measure-$$"
OUT="$(mktemp -d)"
trap '"$KUBECTL" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT

sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
mem_kib() { # FIELD PIDS...: total Pss or Rss of the given pids, in KiB
    local field="$1" total=0 pid v
    shift
    for pid in "$@"; do
        v="$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
tree_pids() { # the supervisor and all its descendants
    local pids=("$1") i=0
    while ((i < ${#pids[@]})); do
        # shellcheck disable=SC2207
        pids+=($(pgrep -P "${pids[$i]}" || true))
        i=$((i + 1))
    done
    echo "${pids[@]}"
}

SUPERVISOR="$(cat "$KUBE_ENV_DATA_DIR/pid" 2>/dev/null || pgrep -f "kube-env run --data-dir $KUBE_ENV_DATA_DIR" | head -1)"
"$KUBECTL" create namespace "$NS" >/dev/null
"$KUBECTL" -n "$NS" create serviceaccount default >/dev/null 2>&1 || true
sleep 2
# shellcheck disable=SC2046
before="$(mem_kib Pss $(tree_pids "$SUPERVISOR"))" before_rss="$(mem_kib Rss $(tree_pids "$SUPERVISOR"))"

pod_yaml() { # NAME NODE: a pod that writes the time its process started to $OUT/NAME
    cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeName: $2
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: registry.invalid/measure:1
    command: [sh, -c, "date +%s.%N > /out/$1; exec sleep 3600"]
    volumeMounts: [{name: out, mountPath: /out}]
  volumes: [{name: out, hostPath: {path: $OUT}}]
EOF
}
for i in $(seq 1 "$PODS"); do pod_yaml "p$i" "kube-env-node-$((i % 2 + 1))"; done >"$OUT/pods.yaml"

created="$(date +%s.%N)"
"$KUBECTL" -n "$NS" apply -f "$OUT/pods.yaml" >/dev/null
applied="$(date +%s.%N)"
for _ in $(seq 1 300); do
    [[ "$(find "$OUT" -name 'p[0-9]*' -type f | wc -l)" -ge "$PODS" ]] && break
    sleep 0.1
done
first="$(cat "$OUT"/p[0-9]* | sort -n | head -1)"
last="$(cat "$OUT"/p[0-9]* | sort -n | tail -1)"
echo "pods: $PODS created in one apply ($(sub "$applied" "$created") s for kubectl apply)"
echo "first process started $(sub "$first" "$created") s after the apply began, the last after $(sub "$last" "$created") s"

# One pod alone, the figure for "a pod's process starts within 1 s of binding".
for i in 1 2 3; do
    pod_yaml "single$i" kube-env-node-1 >"$OUT/single.yaml"
    t0="$(date +%s.%N)"
    "$KUBECTL" -n "$NS" apply -f "$OUT/single.yaml" >/dev/null
    for _ in $(seq 1 100); do [[ -s "$OUT/single$i" ]] && break; sleep 0.05; done
    echo "single pod $i: process started $(sub "$(cat "$OUT/single$i")" "$t0") s after kubectl apply began"
done

sleep 3
# shellcheck disable=SC2046
after="$(mem_kib Pss $(tree_pids "$SUPERVISOR"))" after_rss="$(mem_kib Rss $(tree_pids "$SUPERVISOR"))"
echo "memory of kube-env and everything it runs, before -> with $((PODS + 3)) pods running:" \
    "PSS $((before / 1024)) -> $((after / 1024)) MiB (+$(((after - before) / 1024)));" \
    "RSS summed over processes $((before_rss / 1024)) -> $((after_rss / 1024)) MiB (+$(((after_rss - before_rss) / 1024)))"
