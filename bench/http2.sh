#!/usr/bin/env bash
# HTTP benchmark, HTTP/2 and TLS sections: examples/http.rs against hand-written baselines,
# with h2load (Debian's nghttp2-client). bench/http.sh runs this after its own table (H2_TLS=0
# skips it); it also runs alone:
#
#   bash bench/http2.sh
#
# Sections, targets and loads (every target serves `GET /` -> 200 `Hello from worker ...`):
#   h2c  baseline_h2    one current-thread process per core, own SO_REUSEPORT socket each,
#                       hyper HTTP/2 with prior knowledge (bench/baseline_h2.rs)
#        http/shared    examples/http, POLICY=shared (HTTP/2 by its preface)
#        load: h2load -c$CONNS -m$STREAMS -t$THREADS -D$DURATION http://...
#   tls  baseline_tls   the same processes with rustls (ring) in front of hyper, ALPN
#                       (bench/baseline_tls.rs)
#        http/shared    examples/http with TLS_CERT/TLS_KEY (feature tls)
#        loads: h2 = h2load as above over TLS (ALPN h2); h1 = h2load --h1 -m1 (HTTP/1.1
#        keep-alive over TLS, one request at a time per connection, as wrk)
# A self-signed certificate (P-256) for 127.0.0.1 is made with openssl for the run.
#
# Rounds rotate the order of the targets, as in bench/http.sh. The table gives the median of
# the rounds' req/s, h2load's mean time per request, the ratio to the section's baseline for
# the same load, and the goal: >= 0.90x.
#
# Settings (environment, bench/http.sh passes its own): ROUNDS (3), DURATION (5s), CONNS (64),
# STREAMS (16), THREADS (2), WORKERS (one per CPU), START_TIMEOUT (10), SESSION (own: see
# bench/http.sh), SECTIONS ("h2c tls"), CARGO_TARGET_DIR (target).
set -euo pipefail

cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
STREAMS=${STREAMS:-16}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$(nproc)}
START_TIMEOUT=${START_TIMEOUT:-10}
SESSION=${SESSION:-own}
SECTIONS=${SECTIONS:-h2c tls}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# Loopback only: a benchmark of this machine's own servers.
HOST=127.0.0.1

die() {
    echo "bench/http2.sh: $*" >&2
    exit 1
}

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: want a positive integer"
[[ $DURATION =~ ^([1-9][0-9]*)s$ ]] || die "DURATION=$DURATION: want seconds, like 5s"
DURATION_S=${BASH_REMATCH[1]}
for n in CONNS STREAMS THREADS WORKERS START_TIMEOUT; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n=${!n}: want a positive integer"
done
[[ $SESSION == own || $SESSION == shared ]] || die "SESSION=$SESSION: want own or shared"
for s in $SECTIONS; do
    [[ $s == h2c || $s == tls ]] || die "SECTIONS: unknown section $s (h2c, tls)"
done

as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi
}
if ! command -v h2load >/dev/null 2>&1; then
    echo "== installing h2load (apt: nghttp2-client)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
fi
for tool in h2load openssl ss timeout setsid awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

OUT="$TARGET_DIR/bench-http2"
rm -rf "$OUT"
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv" # section, target, load, round, req/s, mean ms, failed
: >"$RESULTS"

# stop_server and free_port, as bench/http.sh's (start_server here is this script's own).
# shellcheck source=bench/lib.sh
source bench/lib.sh
LOAD_PID=
cleanup() {
    if [[ -n $LOAD_PID ]]; then
        kill -TERM "$LOAD_PID" 2>/dev/null || true
        wait "$LOAD_PID" 2>/dev/null || true
        LOAD_PID=
    fi
    stop_server
}
trap cleanup EXIT
trap 'echo "bench/http2.sh: interrupted" >&2; exit 130' INT
trap 'echo "bench/http2.sh: terminated" >&2; exit 143' TERM

# ---- certificate and build ----------------------------------------------------------------
CERT="$OUT/cert.pem"
KEY="$OUT/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$KEY" -out "$CERT" >"$OUT/openssl.log" 2>&1 ||
    { cat "$OUT/openssl.log" >&2; die "openssl could not make the certificate"; }

EXAMPLES="$TARGET_DIR/release/examples"
echo "== cargo build --release --features tls (examples http, baseline_h2, baseline_tls)"
cargo build --release --features tls --example http --example baseline_h2 \
    --example baseline_tls >"$OUT/build.log" 2>&1 ||
    { tail -n 20 "$OUT/build.log" >&2; die "the build failed (see $OUT/build.log)"; }

# start_server SECTION TARGET LOG: sets SERVER_PID, PORT and URL, or returns 1.
PORT=
URL=
start_server() {
    local section=$1 target=$2 log=$3 cmd scheme=http i status_port
    local env=(HOST=$HOST WORKERS=$WORKERS POLICY=shared)
    case $target in
        baseline_*) cmd=("$EXAMPLES/$target") ;;
        http/shared) cmd=("$EXAMPLES/http") ;;
    esac
    if [[ $section == tls ]]; then
        scheme=https
        env+=(TLS_CERT="$CERT" TLS_KEY="$KEY")
    fi
    [[ -x ${cmd[0]} ]] || { echo "no binary ${cmd[0]}" >"$log"; return 1; }
    PORT=$(free_port) || die "no free port found"
    status_port=$(free_port) || die "no free port found"
    env+=(PORT="$PORT" STATUS_PORT="$status_port")
    URL="$scheme://$HOST:$PORT/"
    if [[ $SESSION == own ]]; then
        env "${env[@]}" setsid "${cmd[@]}" </dev/null >"$log" 2>&1 &
        SERVER_PID=$!
    else
        set -m
        env "${env[@]}" "${cmd[@]}" </dev/null >"$log" 2>&1 &
        SERVER_PID=$!
        set +m
    fi
    # Bounded wait for one HTTP/2 request to succeed (baseline_h2 speaks nothing else).
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "(exited)" >>"$log"; return 1; }
        if timeout 2 h2load -n1 -c1 "$URL" 2>/dev/null | grep -q '1 succeeded'; then
            sleep 0.5
            return 0
        fi
        sleep 0.1
    done
    echo "(no answer within ${START_TIMEOUT}s)" >>"$log"
    return 1
}

# run_load LOAD OUTFILE: one h2load run against $URL.
run_load() {
    local load=$1 out=$2 rc=0
    local args=(-c"$CONNS" -t"$THREADS" -D"$DURATION_S")
    if [[ $load == h1 ]]; then args+=(--h1 -m1); else args+=(-m"$STREAMS"); fi
    timeout -k 2 $((DURATION_S + 30)) h2load "${args[@]}" "$URL" >"$out" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    return "$rc"
}

# parse_h2load OUTFILE: prints "req/s mean_ms failed", or fails without figures.
parse_h2load() {
    awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return -1
        }
        # "finished in 5.00s, 123456.70 req/s, 5.12MB/s"
        $1 == "finished" { rps = $4 + 0 }
        # "requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout"
        $1 == "requests:" { failed = $10 + 0 }
        # "time for request:   min   max   mean   sd   +/- sd"
        $1 == "time" && $3 == "request:" { mean = ms($6) }
        END {
            if (rps == "" || mean == "" || mean < 0) exit 1
            printf "%.2f %.3f %d\n", rps, mean, failed
        }' "$1"
}

LOAD=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$LOAD" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    echo "   warning: load average $LOAD on $(nproc) CPUs before the run: something else is" \
        "busy, the figures will be noisy"
fi
echo "== h2load -c$CONNS -m$STREAMS -t$THREADS -D$DURATION_S, $ROUNDS rounds, $HOST," \
    "$(nproc) CPUs shared with h2load, WORKERS=$WORKERS; sections: $SECTIONS"
START=$SECONDS
for section in $SECTIONS; do
    if [[ $section == h2c ]]; then
        targets=(baseline_h2 http/shared)
        loads=(h2)
    else
        targets=(baseline_tls http/shared)
        loads=(h2 h1)
    fi
    for ((round = 1; round <= ROUNDS; round++)); do
        for ((k = 0; k < ${#targets[@]}; k++)); do
            target=${targets[$(((k + round - 1) % ${#targets[@]}))]}
            log="$OUT/$section.${target//\//_}.r$round.server.log"
            if ! start_server "$section" "$target" "$log"; then
                stop_server
                tail -n 5 "$log" >&2 || true
                die "$section $target did not start or answer (see $log)"
            fi
            for load in "${loads[@]}"; do
                out="$OUT/$section.${target//\//_}.$load.r$round.h2load"
                if run_load "$load" "$out" && figures=$(parse_h2load "$out"); then
                    read -r rps mean failed <<<"$figures"
                    printf '%s\t%s\t%s\t%d\t%s\t%s\t%s\n' "$section" "$target" "$load" \
                        "$round" "$rps" "$mean" "$failed" >>"$RESULTS"
                    printf '   round %d  %-4s %-14s %-3s %12.0f req/s  mean %8.2f ms  failed %s\n' \
                        "$round" "$section" "$target" "$load" "$rps" "$mean" "$failed"
                else
                    printf '   round %d  %-4s %-14s %-3s n/a (h2load failed, see %s)\n' \
                        "$round" "$section" "$target" "$load" "$out"
                fi
            done
            stop_server
        done
    done
done

echo
echo "HTTP/2 and TLS: median of $ROUNDS rounds; h2load -c$CONNS -t$THREADS -D$DURATION_S" \
    "(h2: -m$STREAMS; h1: --h1 -m1) on the same $(nproc) CPUs; loopback; WORKERS=$WORKERS;" \
    "SESSION=$SESSION"
echo "ratio = req/s / req/s of the section's baseline for that load; mean = h2load's mean time per request"
awk -F'\t' '
    function median(list,    a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
        key = $1 SUBSEP $2 SUBSEP $3
        if (!(key in runs)) order[++n] = key
        rps[key] = rps[key] " " $5; mean[key] = mean[key] " " $6; failed[key] += $7; runs[key]++
    }
    END {
        printf "%-5s %-14s %-4s %12s %9s %8s %5s %7s  %s\n", "sect", "target", "load", "req/s", "mean ms", "ratio", "runs", "failed", "goal"
        for (i = 1; i <= n; i++) {
            split(order[i], k, SUBSEP)
            base = k[1] SUBSEP (k[1] == "h2c" ? "baseline_h2" : "baseline_tls") SUBSEP k[3]
            r = median(rps[order[i]])
            ratio = (base in rps) ? r / median(rps[base]) : 0
            verdict = k[2] ~ /^baseline/ ? "" : sprintf(">= 0.90x %s", ratio >= 0.9 ? "PASS" : "MISS")
            printf "%-5s %-14s %-4s %12.0f %9.2f %7.2fx %5d %7d  %s\n", k[1], k[2], k[3], r, median(mean[order[i]]), ratio, runs[order[i]], failed[order[i]], verdict
        }
    }' "$RESULTS"
echo
echo "took $((SECONDS - START)) s of runs (load average now $(cut -d' ' -f1-3 /proc/loadavg));" \
    "raw h2load output and server logs in $OUT"
