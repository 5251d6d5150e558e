#!/usr/bin/env bash
# HTTP benchmark: examples/http.rs in each POLICY against two hand-written baselines.
#
#   bash bench/http.sh
#
# Targets (all serve `GET /` -> 200 text/plain `Hello from worker <slot> (pid <pid>)`):
#   baseline_multithread   one process, tokio multi-thread runtime on every core (bench/)
#   baseline_reuseport     one current-thread process per core, own SO_REUSEPORT socket each,
#                          no supervision: the ideal cluster (bench/)
#   http/<policy>          examples/http.rs with POLICY=shared|round-robin|least-connections|
#                          sticky|reuseport, WORKERS = one per CPU
#   node/rr, node/none     bench/node_http.js: Node's own cluster module (node:http) with WORKERS
#                          workers, cluster.SCHED_RR (Node's default on Linux: the primary accepts
#                          and hands connections out) or SCHED_NONE (the workers accept). The
#                          product's reference: a ratio but no goal. In the default TARGETS only
#                          when `node` is installed; asked for without it, they are n/a.
# Modes: keep-alive, and connection-per-request (`Connection: close` on every request).
# Then bench/http2.sh (H2_TLS=1, the default; 0 skips it) adds its HTTP/2 and TLS sections with
# h2load against baselines of their own (bench/baseline_h2.rs, bench/baseline_tls.rs), with the
# same ROUNDS, DURATION, CONNS, THREADS, WORKERS, START_TIMEOUT and SESSION.
#
# Each round starts every target in turn (rotating the order), runs both modes with wrk against
# it and stops it, so that drift of the machine (thermal, noisy neighbours) hits every target
# alike. The table gives, per target and mode, the median of the rounds' requests/s and p99
# latency, the server's CPU time per request (user + system, from /proc/<pid>/stat before and
# after each wrk run, divided by the requests wrk counted) for the master and for the workers
# apart (a baseline has no master: all its processes count as workers), the ratio to the
# faster baseline of that mode, and the goals (none for node/*):
#   shared      >= 0.95x (both modes)
#   round-robin >= 0.80x keep-alive, >= 0.70x connection-per-request
# A target that does not build, start or answer is `n/a` and the run goes on: the script exits 0
# then, and non-zero only on its own errors (a missing tool, a baseline that fails to build or
# run, bad settings).
#
# wrk runs on the same cores as the servers (loopback only): its thread count is fixed for every
# target (THREADS, default 2), so all of them pay the same for it.
#
# Settings (environment): ROUNDS (3), DURATION (5s, seconds only), CONNS (64), THREADS (2),
# WORKERS (one per CPU), START_TIMEOUT (10 s for a server to answer), TARGETS (space separated,
# default all, node/* only with node installed), CARGO_TARGET_DIR (target). Defaults: 3 x 9
# targets x 2 modes x 5 s = 4.5 min of load plus start/stop, about 5 minutes with a warm build.
# SESSION (own): `own` starts each server in a session of its own (setsid), `shared` in this
# script's session, with wrk. It matters because Linux's autogroup scheduler
# (/proc/sys/kernel/sched_autogroup_enabled, on by default) gives each session one share of
# the CPUs: with `own`, a server gets about half the machine against wrk's half however many
# processes it has, so a cluster's master is paid for out of its workers' share (the strict
# comparison: equal CPU for every target); with `shared`, every process competes on its own,
# as on a machine that only serves (a master's wake-ups are then cheap). The table says which.
set -euo pipefail

# Paths below are relative to the workspace root, as cargo's are.
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$(nproc)}
START_TIMEOUT=${START_TIMEOUT:-10}
SESSION=${SESSION:-own}
# Node's cluster module is the reference, not a requirement: without node the run goes on.
HAVE_NODE=0
command -v node >/dev/null 2>&1 && HAVE_NODE=1
DEFAULT_TARGETS="baseline_multithread baseline_reuseport http/shared http/round-robin"
DEFAULT_TARGETS+=" http/least-connections http/sticky http/reuseport"
[[ $HAVE_NODE == 1 ]] && DEFAULT_TARGETS+=" node/rr node/none"
TARGETS=${TARGETS:-$DEFAULT_TARGETS}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# Loopback only, on purpose: this is a benchmark of the machine's own servers, never a load test
# of anything else.
HOST=127.0.0.1

die() {
    echo "bench/http.sh: $*" >&2
    exit 1
}

# Bad settings are the script's own errors: refuse them before any work.
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: want a positive integer"
[[ $DURATION =~ ^([1-9][0-9]*)s$ ]] || die "DURATION=$DURATION: want seconds, like 5s"
DURATION_S=${BASH_REMATCH[1]}
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS=$CONNS: want a positive integer"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS=$THREADS: want a positive integer"
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "WORKERS=$WORKERS: want a positive integer"
[[ $START_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "START_TIMEOUT=$START_TIMEOUT: want seconds"
[[ $SESSION == own || $SESSION == shared ]] || die "SESSION=$SESSION: want own or shared"
for t in $TARGETS; do
    case $t in
        baseline_multithread | baseline_reuseport | http/shared | http/round-robin) ;;
        http/least-connections | http/sticky | http/reuseport) ;;
        node/rr | node/none) ;;
        *) die "TARGETS: unknown target $t" ;;
    esac
done

# ---- tools: install what is missing (we are root on these machines; sudo otherwise) --------
as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi
}
if ! command -v wrk >/dev/null 2>&1; then
    echo "== installing wrk (apt)"
    # A fresh machine has no package lists: update once, only when something is missing.
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
for tool in wrk ss timeout setsid awk getconf; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

# ---- logs and results of this run ---------------------------------------------------------
OUT="$TARGET_DIR/bench-http"
rm -rf "$OUT"
mkdir -p "$OUT"
# target, mode, round, req/s, p99 ms, errors, CPU us per request of the master (- for a
# baseline) and of the workers
RESULTS="$OUT/results.tsv"
: >"$RESULTS"

# The servers, wrk and the CPU counts (start_server, run_wrk, cpu_per_request, ...).
# shellcheck source=bench/lib.sh
source bench/lib.sh

# ---- cleanup: whatever we started goes, on success, error, Ctrl-C or kill ------------------
cleanup() {
    if [[ -n $WRK_PID ]]; then
        kill -TERM "$WRK_PID" 2>/dev/null || true
        wait "$WRK_PID" 2>/dev/null || true
        WRK_PID=
    fi
    stop_server
    [[ -z $RUNTIME_DIR ]] || rm -rf "$RUNTIME_DIR"
}
# Each server's own runtime directory (XDG_RUNTIME_DIR), for a cluster's control socket:
# another cluster named `http` on this machine (a test, a developer's run) holds the default
# one, and a master refuses to start beside it. Short, under /tmp: a Unix socket's path is
# limited to 107 bytes.
RUNTIME_DIR=$(mktemp -d "${TMPDIR:-/tmp}/bench-http.XXXXXX") || die "mktemp failed"
STARTS=0
trap cleanup EXIT
# A signal ends the run; the EXIT trap then cleans up. wrk runs in the background with `wait`
# (below) so that these traps fire at once rather than when wrk's run is over.
trap 'echo "bench/http.sh: interrupted" >&2; exit 130' INT
trap 'echo "bench/http.sh: terminated" >&2; exit 143' TERM

# ---- build --------------------------------------------------------------------------------
# examples/http.rs may need the crate's `http` feature (hyper behind it), and it may not exist
# yet: try everything in one build, and if that fails build the baselines alone and report
# http as n/a. The baselines failing to build is an error of this script.
EXAMPLES="$TARGET_DIR/release/examples"
HTTP_FEATURES=()
if awk '/^\[/ { sec = $0 } sec == "[features]" && /^http[ \t]*=/ { found = 1 } END { exit !found }' Cargo.toml; then
    HTTP_FEATURES=(--features http)
fi
HTTP_BUILT=0
echo "== cargo build --release (examples http, baseline_multithread, baseline_reuseport)"
if [[ -f examples/http.rs ]] &&
    cargo build --release "${HTTP_FEATURES[@]}" --example http \
        --example baseline_multithread --example baseline_reuseport >"$OUT/build.log" 2>&1; then
    HTTP_BUILT=1
else
    if [[ -f examples/http.rs ]]; then
        echo "   examples/http does not build (see $OUT/build.log); its targets will be n/a"
        tail -n 5 "$OUT/build.log" | sed 's/^/   | /'
    else
        echo "   examples/http.rs does not exist yet; its targets will be n/a"
    fi
    cargo build --release --example baseline_multithread --example baseline_reuseport \
        >"$OUT/build-baselines.log" 2>&1 ||
        { cat "$OUT/build-baselines.log" >&2; die "the baselines do not build"; }
fi

# ---- the run ------------------------------------------------------------------------------
read -r -a TARGET_LIST <<<"$TARGETS"
declare -A UNAVAILABLE=() # target -> why
if [[ $HTTP_BUILT == 0 ]]; then
    for t in "${TARGET_LIST[@]}"; do
        [[ $t == http/* ]] && UNAVAILABLE[$t]="examples/http not built"
    done
fi
if [[ $HAVE_NODE == 0 ]]; then
    for t in "${TARGET_LIST[@]}"; do
        [[ $t == node/* ]] && UNAVAILABLE[$t]="node is not installed (command -v node)"
    done
    echo "   node is not installed: the node/* references (Node's cluster module) are left out"
fi

MODES=(keep-alive close)
# Other work on the cores (a build) skews every figure: say so rather than print them as clean.
LOAD=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$LOAD" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    echo "   warning: load average $LOAD on $(nproc) CPUs before the run: something else is" \
        "busy, the figures will be noisy"
fi
START=$SECONDS
# The load average says whether something else (a build) was competing for the cores.
echo "== wrk -t$THREADS -c$CONNS -d$DURATION --latency, $ROUNDS rounds, $HOST, $(nproc) CPUs" \
    "shared with wrk, WORKERS=$WORKERS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
n=${#TARGET_LIST[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((k = 0; k < n; k++)); do
        # Rotate the order each round so no target always runs first (or right after another).
        target=${TARGET_LIST[$(((k + round - 1) % n))]}
        [[ -z ${UNAVAILABLE[$target]:-} ]] || continue
        log="$OUT/${target//\//_}.r$round.server.log"
        SAMPLE=
        if ! start_server "$target" "$log"; then
            stop_server
            if [[ $target == baseline_* ]]; then
                tail -n 5 "$log" >&2 || true
                die "$target did not start or answer (see $log)"
            fi
            UNAVAILABLE[$target]="did not start or answer: $(tail -n 1 "$log" 2>/dev/null)"
            printf '   round %d  %-24s n/a (%s)\n' "$round" "$target" "${UNAVAILABLE[$target]}"
            continue
        fi
        [[ $round == 1 ]] && printf '   %-24s answers "%s"\n' "$target" "$SAMPLE"
        for mode in "${MODES[@]}"; do
            out="$OUT/${target//\//_}.$mode.r$round.wrk"
            cpu_before=$(cpu_snapshot "$target")
            if run_wrk "$PORT" "$mode" "$out" && figures=$(parse_wrk "$out"); then
                read -r rps p99 errors requests <<<"$figures"
                read -r master_us workers_us < <(cpu_per_request "$cpu_before" \
                    "$(cpu_snapshot "$target")" "$requests" "$target")
                printf '%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n' "$target" "$mode" "$round" "$rps" \
                    "$p99" "$errors" "$master_us" "$workers_us" >>"$RESULTS"
                printf '   round %d  %-24s %-10s %12.0f req/s  p99 %8.2f ms  errors %s' \
                    "$round" "$target" "$mode" "$rps" "$p99" "$errors"
                printf '  CPU us/req master %s workers %s\n' "$master_us" "$workers_us"
            else
                # wrk failed against this server (e.g. it died under load).
                [[ $target == baseline_* ]] && die "wrk failed against $target (see $out)"
                printf '   round %d  %-24s %-10s n/a (wrk failed, see %s)\n' \
                    "$round" "$target" "$mode" "$out"
            fi
        done
        stop_server
    done
done

# ---- the table ----------------------------------------------------------------------------
echo
echo "HTTP benchmark: median of $ROUNDS rounds; wrk -t$THREADS -c$CONNS -d$DURATION on the same" \
    "$(nproc) CPUs; loopback; WORKERS=$WORKERS; SESSION=$SESSION (autogroup" \
    "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo n/a))"
echo "ratio = req/s / req/s of the faster baseline in that mode; close = Connection: close;" \
    "master us, workers us = server CPU microseconds per request (user + system)"
awk -F'\t' -v targets="$TARGETS" '
    function median(list,    a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
        key = $1 SUBSEP $2
        rps[key] = rps[key] " " $4; p99[key] = p99[key] " " $5; err[key] += $6; runs[key]++
        # "-": a baseline has no master; "n/a": a process ended during that run.
        if ($7 != "-" && $7 != "n/a") master[key] = master[key] " " $7
        if ($8 != "n/a") workers[key] = workers[key] " " $8
    }
    END {
        nt = split(targets, T, " ")
        split("keep-alive close", M, " ")
        for (m = 1; m <= 2; m++) {
            best[M[m]] = 0
            for (b = 1; b <= 2; b++) {
                key = (b == 1 ? "baseline_multithread" : "baseline_reuseport") SUBSEP M[m]
                if (key in rps && median(rps[key]) > best[M[m]]) best[M[m]] = median(rps[key])
            }
        }
        goal["http/shared", "keep-alive"] = 0.95; goal["http/shared", "close"] = 0.95
        goal["http/round-robin", "keep-alive"] = 0.80; goal["http/round-robin", "close"] = 0.70
        printf "%-11s %-24s %12s %10s %10s %11s %8s %6s %7s  %s\n", "mode", "target", "req/s", "p99 ms", "master us", "workers us", "ratio", "runs", "errors", "goal"
        for (m = 1; m <= 2; m++) {
            for (t = 1; t <= nt; t++) {
                key = T[t] SUBSEP M[m]
                g = ((T[t], M[m]) in goal) ? sprintf(">= %.2fx ", goal[T[t], M[m]]) : ""
                # Node cluster: the reference to compare with, no goal of its own.
                ref = T[t] ~ /^node\// ? "reference" : ""
                if (!(key in rps)) {
                    printf "%-11s %-24s %12s %10s %10s %11s %8s %6s %7s  %s\n", M[m], T[t], "n/a", "n/a", "n/a", "n/a", "n/a", 0, "-", (g == "" ? ref : g "n/a")
                    continue
                }
                r = median(rps[key]); ratio = best[M[m]] > 0 ? r / best[M[m]] : 0
                verdict = ref
                if (g != "") verdict = g (best[M[m]] > 0 ? (ratio >= goal[T[t], M[m]] ? "PASS" : "MISS") : "n/a")
                mu = (key in master) ? sprintf("%.2f", median(master[key])) : (T[t] ~ /^baseline_/ ? "-" : "n/a")
                wu = (key in workers) ? sprintf("%.2f", median(workers[key])) : "n/a"
                printf "%-11s %-24s %12.0f %10.2f %10s %11s %7.2fx %6d %7d  %s\n", M[m], T[t], r, median(p99[key]), mu, wu, ratio, runs[key], err[key], verdict
            }
        }
    }' "$RESULTS"
echo
for t in "${TARGET_LIST[@]}"; do
    [[ -z ${UNAVAILABLE[$t]:-} ]] || echo "n/a: $t: ${UNAVAILABLE[$t]}"
done
echo "took $((SECONDS - START)) s of runs (load average now $(cut -d' ' -f1-3 /proc/loadavg));" \
    "raw wrk output and server logs in $OUT"

# ---- the HTTP/2 and TLS sections ----------------------------------------------------------
if [[ ${H2_TLS:-1} == 1 ]]; then
    echo
    ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS THREADS=$THREADS WORKERS=$WORKERS \
        START_TIMEOUT=$START_TIMEOUT SESSION=$SESSION CARGO_TARGET_DIR=$TARGET_DIR \
        bash bench/http2.sh
fi
