#!/usr/bin/env bash
# Paired HTTP benchmark: two targets of bench/http.sh (A, the reference, and B) running at once,
# loaded in turn by short wrk slices, A B B A A B ..., and compared pair by pair.
#
#   bash bench/pair.sh                      # baseline_reuseport against http/shared
#   A=baseline_reuseport B=http/round-robin PAIRS=30 bash bench/pair.sh
#   A=http/shared A_BIN=/tmp/http-before B=http/shared bash bench/pair.sh   # two builds
#
# Why: on this kind of machine (2 shared cores) the speed of every target moves by 20-25%
# between two modes that last some tens of seconds and have nothing to do with the target
# (seen in bench/http.sh's rounds, pinned or not): a 5 s run of each target in turn lands in
# either mode, so a 5-round median of each can differ by 10% between two identical servers.
# Two slices next to each other almost always share a mode, so the ratio of the two is
# steady even when the absolute figures are not. The result is the median of the pairs'
# ratios, for req/s and for the workers' CPU microseconds per request (as bench/http.sh counts
# it: /proc/<pid>/stat of the server's processes before and after each slice), with the
# quartiles so that the spread is seen, and each slice's figures in $OUT/pairs.tsv.
#
# Settings (environment): A (baseline_reuseport), B (http/shared), A_BIN and B_BIN (for an
# http/* side: an examples/http binary to run instead of this tree's release build, such as a
# copy of an earlier build, to measure what a change moved), PAIRS (20), SLICE (2s),
# MODE (keep-alive or close), CONNS (64), THREADS (2), WORKERS (one per CPU), SESSION (own;
# see bench/http.sh), START_TIMEOUT (10), CARGO_TARGET_DIR (target). About PAIRS x 2 x SLICE
# of load: 80 s by default.
set -euo pipefail

cd "$(dirname "$0")/.."

A=${A:-baseline_reuseport}
B=${B:-http/shared}
PAIRS=${PAIRS:-20}
SLICE=${SLICE:-2s}
MODE=${MODE:-keep-alive}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$(nproc)}
SESSION=${SESSION:-own}
START_TIMEOUT=${START_TIMEOUT:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
HOST=127.0.0.1
HAVE_NODE=0
command -v node >/dev/null 2>&1 && HAVE_NODE=1

die() {
    echo "bench/pair.sh: $*" >&2
    exit 1
}

for t in "$A" "$B"; do
    case $t in
        baseline_multithread | baseline_reuseport | http/*) ;;
        node/rr | node/none) ;;
        *) die "unknown target $t (want one of bench/http.sh's)" ;;
    esac
done
A_BIN=${A_BIN:-}
B_BIN=${B_BIN:-}
for bin in "$A_BIN" "$B_BIN"; do
    [[ -z $bin || -x $bin ]] || die "$bin is not an executable file"
done
[[ $A != "$B" || $A_BIN != "$B_BIN" ]] || die "A and B are both $A${A_BIN:+ ($A_BIN)}"
[[ $PAIRS =~ ^[1-9][0-9]*$ ]] || die "PAIRS=$PAIRS: want a positive integer"
[[ $SLICE =~ ^([1-9][0-9]*)s$ ]] || die "SLICE=$SLICE: want seconds, like 2s"
DURATION=$SLICE
DURATION_S=${BASH_REMATCH[1]}
[[ $MODE == keep-alive || $MODE == close ]] || die "MODE=$MODE: want keep-alive or close"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS=$CONNS: want a positive integer"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS=$THREADS: want a positive integer"
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "WORKERS=$WORKERS: want a positive integer"
[[ $SESSION == own || $SESSION == shared ]] || die "SESSION=$SESSION: want own or shared"
for tool in wrk ss timeout setsid awk getconf; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (bash bench/http.sh installs wrk)"
done

OUT="$TARGET_DIR/bench-pair"
rm -rf "$OUT"
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh

# Both servers run for the whole benchmark: their pids and ports, by target.
declare -A PID_OF=() PORT_OF=() BIN_OF=([A]=$A_BIN [B]=$B_BIN)
cleanup() {
    if [[ -n $WRK_PID ]]; then
        kill -TERM "$WRK_PID" 2>/dev/null || true
        wait "$WRK_PID" 2>/dev/null || true
        WRK_PID=
    fi
    local t
    for side in "${!PID_OF[@]}"; do
        SERVER_PID=${PID_OF[$side]}
        stop_server
    done
    [[ -z ${RUNTIME_DIR:-} ]] || rm -rf "$RUNTIME_DIR"
}
RUNTIME_DIR=$(mktemp -d "${TMPDIR:-/tmp}/bench-pair.XXXXXX") || die "mktemp failed"
trap cleanup EXIT
trap 'echo "bench/pair.sh: interrupted" >&2; exit 130' INT
trap 'echo "bench/pair.sh: terminated" >&2; exit 143' TERM

EXAMPLES="$TARGET_DIR/release/examples"
build=()
for t in "$A" "$B"; do
    case $t in
        baseline_*) build+=(--example "$t") ;;
        http/*) [[ " ${build[*]} " == *" --example http "* ]] || build+=(--features http --example http) ;;
    esac
done
if ((${#build[@]} > 0)); then
    echo "== cargo build --release ${build[*]}"
    cargo build --release "${build[@]}" >"$OUT/build.log" 2>&1 ||
        { tail -n 20 "$OUT/build.log" >&2; die "the build failed (see $OUT/build.log)"; }
fi

# The two sides by name (A, B), since both may be the same target with two binaries.
declare -A TARGET_OF=([A]=$A [B]=$B)
for side in A B; do
    t=${TARGET_OF[$side]}
    log="$OUT/$side.${t//\//_}.server.log"
    HTTP_BIN=${BIN_OF[$side]}
    start_server "$t" "$log" || { tail -n 5 "$log" >&2; die "$t did not start or answer (see $log)"; }
    PID_OF[$side]=$SERVER_PID
    PORT_OF[$side]=$PORT
    SERVER_PID=
    printf '   %s: %-24s %s answers "%s"\n' "$side" "$t" "${BIN_OF[$side]}" "$SAMPLE"
done

LOAD=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$LOAD" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    echo "   warning: load average $LOAD on $(nproc) CPUs before the run: something else is busy"
fi
echo "== $PAIRS pairs of wrk -t$THREADS -c$CONNS -d$SLICE ($MODE), A=$A B=$B, WORKERS=$WORKERS," \
    "SESSION=$SESSION, $(nproc) CPUs shared with wrk"

# One slice against side $1 (A or B): prints "req/s workers_us", or fails.
slice() {
    local side=$1 out=$2 t=${TARGET_OF[$1]} before figures rps p99 errors requests
    local master_us workers_us
    SERVER_PID=${PID_OF[$side]}
    before=$(cpu_snapshot "$t")
    run_wrk "${PORT_OF[$side]}" "$MODE" "$out" || return 1
    figures=$(parse_wrk "$out") || return 1
    read -r rps p99 errors requests <<<"$figures"
    ((errors == 0)) || { echo "   $t: $errors errors in $out" >&2; return 1; }
    read -r master_us workers_us < <(cpu_per_request "$before" "$(cpu_snapshot "$t")" \
        "$requests" "$t")
    SERVER_PID=
    echo "$rps $workers_us"
}

PAIRS_TSV="$OUT/pairs.tsv"
: >"$PAIRS_TSV"
for ((i = 1; i <= PAIRS; i++)); do
    # A B, then B A: whichever runs second in a pair is not always the same one.
    if ((i % 2)); then order=(A B); else order=(B A); fi
    declare -A got=()
    for side in "${order[@]}"; do
        got[$side]=$(slice "$side" "$OUT/$side.$i.wrk") ||
            die "wrk against $side (${TARGET_OF[$side]}) failed in pair $i"
    done
    read -r a_rps a_us <<<"${got[A]}"
    read -r b_rps b_us <<<"${got[B]}"
    printf '%d\t%s\t%s\t%s\t%s\n' "$i" "$a_rps" "$a_us" "$b_rps" "$b_us" >>"$PAIRS_TSV"
    awk -v i="$i" -v ar="$a_rps" -v au="$a_us" -v br="$b_rps" -v bu="$b_us" 'BEGIN {
        printf "   pair %2d  A %9.0f req/s %6s us  B %9.0f req/s %6s us  B/A req/s %.3f  CPU %s\n",
            i, ar, au, br, bu, br / ar, (au + 0 > 0 && bu != "n/a" && au != "n/a") ? sprintf("%.3f", bu / au) : "n/a" }'
done

echo
echo "paired benchmark: $PAIRS pairs of $SLICE slices, $MODE; A=$A${A_BIN:+ ($A_BIN)}," \
    "B=$B${B_BIN:+ ($B_BIN)};" \
    "ratio = B / A within each pair; workers us = the serving processes' CPU microseconds per request"
awk -F'\t' '
    function sort(a, n,    i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    }
    # The q-quantile of the sorted a[1..n], interpolated.
    function q(a, n, p,    x, k) {
        x = 1 + (n - 1) * p; k = int(x)
        return k >= n ? a[n] : a[k] + (x - k) * (a[k + 1] - a[k])
    }
    {
        n++; ar[n] = $2; br[n] = $4; rr[n] = $4 / $2
        if ($3 != "n/a" && $5 != "n/a" && $3 > 0) { m++; au[m] = $3; bu[m] = $5; cr[m] = $5 / $3 }
    }
    END {
        sort(ar, n); sort(br, n); sort(rr, n)
        printf "%-22s %12s %12s %10s %10s\n", "", "A", "B", "B/A", "B/A q1-q3"
        printf "%-22s %12.0f %12.0f %9.3fx %5.3f-%.3f\n", "req/s (median)", q(ar, n, .5), q(br, n, .5), q(rr, n, .5), q(rr, n, .25), q(rr, n, .75)
        if (m > 0) {
            sort(au, m); sort(bu, m); sort(cr, m)
            printf "%-22s %12.2f %12.2f %9.3fx %5.3f-%.3f\n", "workers us/req (median)", q(au, m, .5), q(bu, m, .5), q(cr, m, .5), q(cr, m, .25), q(cr, m, .75)
        }
    }' "$PAIRS_TSV"
echo "slices in $PAIRS_TSV (pair, A req/s, A us, B req/s, B us); wrk output and server logs in $OUT"
