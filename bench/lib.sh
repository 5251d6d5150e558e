# Shared by bench/http.sh and bench/pair.sh: starting and stopping one server, running wrk
# against it, and the server's CPU per request. Sourced, not run; the caller sets, before it
# calls these: HOST, WORKERS, SESSION, START_TIMEOUT, EXAMPLES (the release examples' folder),
# RUNTIME_DIR (a private directory), HAVE_NODE (0 or 1), THREADS, CONNS, DURATION,
# DURATION_S, and a `die` function; HTTP_BIN, if set, is the examples/http binary to start
# for http/* targets. They set SERVER_PID, PORT, SAMPLE and WRK_PID.

# ---- stopping the server -------------------------------------------------------------------
SERVER_PID=
WRK_PID=
stop_server() {
    local pid=$SERVER_PID i
    [[ -n $pid ]] || return 0
    SERVER_PID=
    # SIGTERM to the leader first (a cluster master shuts its workers down itself), give it up
    # to 3 s, then SIGKILL the whole process group for anything left: each server runs in a
    # session and group of its own (setsid), so this reaches its workers and nothing else.
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---- servers ------------------------------------------------------------------------------
# A free port for each start: below the kernel's ephemeral range, so that wrk's own client
# ports never take it, and free of any socket in any state (ss lists TIME_WAIT too).
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12000))
        if [[ -z $(ss -Htan "sport = :$p") ]]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# One GET / over bash's /dev/tcp (no curl needed); prints the whole response. The inner script
# takes host and port as its $1 and $2, hence the single quotes.
probe() {
    # shellcheck disable=SC2016
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" "$1" >&3
        cat <&3' probe "$HOST" "$1" 2>/dev/null
}

# start_server TARGET LOG: starts it on a free port; sets SERVER_PID and PORT, or returns 1.
PORT=
start_server() {
    local target=$1 log=$2 cmd policy='' node_policy='' i resp
    case $target in
        baseline_*) cmd=("$EXAMPLES/$target") ;;
        http/*) cmd=("${HTTP_BIN:-$EXAMPLES/http}") policy=${target#http/} ;;
        node/*) cmd=(node bench/node_http.js) node_policy=${target#node/} ;;
    esac
    if [[ $target == node/* ]]; then
        [[ $HAVE_NODE == 1 ]] || { echo "node is not installed" >"$log"; return 1; }
    else
        [[ -x ${cmd[0]} ]] || { echo "no binary ${cmd[0]}" >"$log"; return 1; }
    fi
    PORT=$(free_port) || die "no free port found"
    # examples/http serves its status server too (as it does by default): on a free port, so
    # that two runs, or anything else on 8001, do not collide.
    local status_port
    status_port=$(free_port) || die "no free port found"
    STARTS=$((${STARTS:-0} + 1))
    local runtime="$RUNTIME_DIR/$STARTS"
    mkdir -p "$runtime"
    # A process group of its own (pgid = its pid), so that stop_server can kill it and all its
    # workers, and a Ctrl-C at the terminal reaches only this script. SESSION=own (default)
    # also gives it a session of its own (setsid), SESSION=shared keeps it in this script's
    # session, with wrk: see SESSION above.
    if [[ $SESSION == own ]]; then
        HOST=$HOST PORT=$PORT WORKERS=$WORKERS POLICY=$policy NODE_POLICY=$node_policy \
            STATUS_PORT=$status_port XDG_RUNTIME_DIR=$runtime setsid "${cmd[@]}" </dev/null \
            >"$log" 2>&1 &
        SERVER_PID=$!
    else
        set -m
        HOST=$HOST PORT=$PORT WORKERS=$WORKERS POLICY=$policy NODE_POLICY=$node_policy \
            STATUS_PORT=$status_port XDG_RUNTIME_DIR=$runtime "${cmd[@]}" </dev/null \
            >"$log" 2>&1 &
        SERVER_PID=$!
        set +m
    fi
    # Bounded wait for a 200 (it may die instead: stop waiting then).
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "(exited)" >>"$log"; return 1; }
        if resp=$(probe "$PORT") && [[ $resp == "HTTP/1.1 200"* ]]; then
            SAMPLE=${resp##*$'\r\n\r\n'}
            # The port answers as soon as one worker does: give the others a moment.
            sleep 0.5
            return 0
        fi
        sleep 0.1
    done
    echo "(no 200 within ${START_TIMEOUT}s)" >>"$log"
    return 1
}

# ---- wrk ----------------------------------------------------------------------------------
# run_wrk PORT MODE OUTFILE: one wrk run; returns non-zero if wrk failed.
run_wrk() {
    local port=$1 mode=$2 out=$3 rc=0
    local args=(-t"$THREADS" -c"$CONNS" -d"$DURATION" --latency)
    [[ $mode == close ]] && args+=(-H "Connection: close")
    # In the background + wait so that a signal's trap runs at once; `timeout` bounds a wrk
    # that would hang past its own duration.
    timeout -k 2 $((DURATION_S + 15)) wrk "${args[@]}" "http://$HOST:$port/" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=
    return "$rc"
}

# parse_wrk OUTFILE: prints "req/s p99_ms errors requests", or fails when the output has no
# figures.
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return -1
        }
        $1 == "99%" { p99 = ms($2) }
        $1 == "Requests/sec:" { rps = $2 }
        # "  285393 requests in 4.02s, 36.20MB read"
        $2 == "requests" && $3 == "in" { requests = $1 }
        # "Socket errors: connect 0, read 0, write 0, timeout 0"
        $1 == "Socket" && $2 == "errors:" {
            for (i = 3; i <= NF; i += 2) { v = $(i + 1); sub(/,/, "", v); err += v }
        }
        # "Non-2xx or 3xx responses: N"
        /^ *Non-2xx or 3xx responses:/ { err += $NF }
        END {
            if (rps == "" || p99 == "" || p99 < 0 || requests + 0 <= 0) exit 1
            printf "%s %.3f %d %d\n", rps, p99, err, requests
        }' "$1"
}

# ---- server CPU -------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# cpu_snapshot TARGET: one "role pid ticks" line per process of the running server, ticks
# being its user + system CPU time so far (all its threads). A cluster (http/*, node/*) is
# its master and the master's children, the workers; a baseline has no master, so its
# process and any children are all "worker". Processes are found by their parent in /proc,
# so that this needs no procps.
cpu_snapshot() {
    local target=$1 file stat pid role fields
    for file in /proc/[0-9]*/stat; do
        # `read`, not `$(<...)`: no subshell per process. A process may end meanwhile.
        { read -r stat <"$file"; } 2>/dev/null || continue
        pid=${stat%% *}
        # The command (field 2) may hold spaces and parentheses: count from its last ')'.
        read -r -a fields <<<"${stat##*) }"
        # fields[1]: the parent; fields[11], fields[12]: utime, stime (stat's 14th, 15th).
        if [[ $pid == "$SERVER_PID" ]]; then
            role=master
            [[ $target == baseline_* ]] && role=worker
        elif [[ ${fields[1]} == "$SERVER_PID" ]]; then
            role=worker
        else
            continue
        fi
        echo "$role $pid $((fields[11] + fields[12]))"
    done
}

# cpu_per_request BEFORE AFTER REQUESTS TARGET: prints "master_us workers_us", the CPU
# microseconds per request each used between the two snapshots ("-" for a baseline's
# master). A process that started in between counts from its start; if one ended in between
# (a crash, a server stopped from outside), its time is lost, so that role's figure is n/a.
cpu_per_request() {
    local baseline=0
    [[ $4 == baseline_* ]] && baseline=1
    { sed 's/^/before /' <<<"$1"; sed 's/^/after /' <<<"$2"; } | awk -v req="$3" \
        -v tck="$CLK_TCK" -v baseline="$baseline" '
        $1 == "before" { before[$3] = $4; role[$3] = $2; next }
        { used[$2] += $4 - ($3 in before ? before[$3] : 0); after[$3] = 1 }
        END {
            for (pid in before) if (!(pid in after)) lost[role[pid]] = 1
            us = 1e6 / tck / req
            for (r in lost) used[r] = "n/a"
            # No process of that role at all (a server that died before the run).
            if (!("master" in used)) used["master"] = "n/a"
            if (!("worker" in used)) used["worker"] = "n/a"
            for (r in used) if (used[r] != "n/a") used[r] = sprintf("%.2f", used[r] * us)
            printf "%s %s\n", baseline ? "-" : used["master"], used["worker"]
        }'
}
