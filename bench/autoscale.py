#!/usr/bin/env python3
"""The autoscaler's timeline: a cluster autoscaled from 1 worker, a wrk load on, then off.

    python3 bench/autoscale.py

Builds the ops fixture (tests/fixture/ops_fixture.rs; PROFILE, default debug, as the tests
build it): HTTP workers on the
current-thread runtime, one core each at most, whose `/spin-<ms>` computes for that long, so
that the load is the workers' CPU and not the kernel's or wrk's (examples/http's `/` costs a
worker about 20 us, and wrk saturates a 2-CPU machine long before the workers do). Starts it
with one worker and `CLUSTER_AUTOSCALE` (1..4), and samples `/status` every second: the
group's slots, its ready workers, the CPU they used since the last sample (from each
worker's `cpu_seconds`), and the autoscaler's decisions. After IDLE_BEFORE seconds it runs wrk on `/spin-SPIN` for LOAD seconds (connection per request,
`Connection: close`, so that every worker gets new connections: a keep-alive connection stays
on the worker that accepted it), then samples on for IDLE_AFTER seconds, or until the group is back at its min.

Writes bench/autoscale.md (the table: every second whose size or decision changed, and one row
every 5 s), bench/autoscale.csv (every sample) and, when gnuplot is installed, bench/autoscale.png.
Uses only Python's standard library, wrk and, for the plot, gnuplot.

Settings (environment): AUTOSCALE (1..4), LOAD (60), IDLE_BEFORE (10), IDLE_AFTER (150),
SPIN (2, milliseconds of computing per request), CONNS (32), THREADS (1), PROFILE (debug or
release), NO_BUILD (set: use the binary as built), CARGO_TARGET_DIR (target);
any CLUSTER_* variable is passed on (such as CLUSTER_AUTOSCALE_UP_CPU or
CLUSTER_AUTOSCALE_DOWN_WINDOW; the defaults are the cluster's). PLOT_ONLY (set): only draw the
png again from bench/autoscale.csv.
"""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "autoscale")


def setting(name, default):
    return int(os.environ.get(name, default))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
        return json.load(r)


class Sampler(threading.Thread):
    """Reads /status every second; each row is one sample."""

    def __init__(self, port, start):
        super().__init__(daemon=True)
        self.port, self.start_at = port, start
        self.rows, self.phase, self.stop = [], "idle", threading.Event()
        self.cpu = {}  # pid -> (cpu_seconds, when)
        self.decisions = 0

    def run(self):
        next_at = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                self.rows.append(self.sample(status(self.port), now))
            except OSError as e:
                print(f"autoscale.py: /status: {e}", file=sys.stderr)
            next_at += 1.0
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def sample(self, s, now):
        group = s["autoscale"][0]
        cores = 0.0
        seen = {}
        for w in s["workers"]:
            pid, secs = w.get("pid"), w.get("cpu_seconds")
            if pid is None or secs is None:
                continue
            seen[pid] = (secs, now)
            before = self.cpu.get(pid)
            if before and now > before[1]:
                cores += max(0.0, secs - before[0]) / (now - before[1])
        self.cpu = seen
        total = group["decisions_up"] + group["decisions_down"]
        decision = ""
        last = group.get("last_decision")
        if total != self.decisions and last:
            decision = f"{last['from']} -> {last['to']}: {last['reason']}"
        self.decisions = total
        return {
            "t": round(now - self.start_at),
            "load": self.phase,
            "workers": group["workers"],
            "ready": sum(1 for w in s["workers"] if w["state"] == "ready"),
            "cpu": round(cores, 2),
            "decision": decision,
        }


def wrk(port, seconds):
    conns, threads = setting("CONNS", 32), setting("THREADS", 1)
    cmd = [
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s",
        "-H", "Connection: close", f"http://127.0.0.1:{port}/spin-{setting('SPIN', 2)}",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def table(rows):
    keep = [
        r for i, r in enumerate(rows)
        if r["decision"] or i == 0 or r["t"] % 5 == 0
        or r["workers"] != rows[i - 1]["workers"] or r["load"] != rows[i - 1]["load"]
    ]
    lines = [
        "| t (s) | load | workers | ready | CPU (cores, all workers) | decision |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in keep:
        lines.append(
            f"| {r['t']} | {r['load']} | {r['workers']} | {r['ready']} | {r['cpu']:.2f} | {r['decision']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows, load_on, load_off, most):
    if not shutil.which("gnuplot"):
        print("autoscale.py: no gnuplot, no png (apt-get install gnuplot-nox)", file=sys.stderr)
        return
    data = OUT + ".dat"
    with open(data, "w") as f:
        for r in rows:
            f.write(f"{r['t']} {r['workers']} {r['cpu']}\n")
    script = f"""
set terminal pngcairo size 800,360 font ",10"
set output "{OUT}.png"
set xlabel "time (s)"
set ylabel "workers"
set y2label "CPU of all workers (cores)"
set ytics 1 nomirror
set y2tics
set yrange [0:{most + 1}]
set y2range [0:*]
set key top right
set object 1 rect from {load_on},graph 0 to {load_off},graph 1 fc rgb "#eeeeee" behind
set label 1 "wrk load" at {load_on + 1},graph 0.95
plot "{data}" using 1:2 with steps lw 2 title "workers", \\
     "{data}" using 1:3 axes x1y2 with lines lw 1 title "CPU (cores)"
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.remove(data)


def main():
    load, before, after = setting("LOAD", 60), setting("IDLE_BEFORE", 10), setting("IDLE_AFTER", 150)
    autoscale = os.environ.get("AUTOSCALE", "1..4")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    profile = os.environ.get("PROFILE", "debug")
    if not os.environ.get("NO_BUILD"):
        build = ["cargo", "build", "--bin", "cluster-ops-fixture"]
        if profile == "release":
            build.append("--release")
        subprocess.run(build, cwd=ROOT, check=True)
    http, stat = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env.update(
        OPS_HTTP_PORT=str(http), OPS_STATUS_PORT=str(stat), OPS_COUNT="1",
        OPS_CURRENT_THREAD="1", CLUSTER_AUTOSCALE=autoscale,
    )
    log = open(OUT + ".log", "w")
    master = subprocess.Popen(
        [os.path.join(target, profile, "cluster-ops-fixture")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if sum(w["state"] == "ready" for w in status(stat)["workers"]) >= 1:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or master.poll() is not None:
                sys.exit(f"autoscale.py: the cluster did not start; see {OUT}.log")
            time.sleep(0.05)
        start = time.monotonic()
        sampler = Sampler(stat, start)
        sampler.start()
        time.sleep(before)
        sampler.phase = "wrk"
        load_on = time.monotonic() - start
        report = wrk(http, load)
        load_off = time.monotonic() - start
        sampler.phase = "idle"
        minimum = int(autoscale.split("..")[0])
        end = time.monotonic() + after
        while time.monotonic() < end:
            rows = sampler.rows[-5:]
            if len(rows) == 5 and all(r["workers"] == minimum and r["load"] == "idle" for r in rows):
                break
            time.sleep(1)
        sampler.stop.set()
        sampler.join()
    finally:
        os.killpg(master.pid, signal.SIGTERM)
        master.wait(timeout=30)
        log.close()
    rows = sampler.rows
    with open(OUT + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    errors = [l.strip() for l in report.splitlines() if "error" in l.lower() or "Non-2xx" in l]
    rps = next((l.split()[1] for l in report.splitlines() if l.startswith("Requests/sec")), "?")
    conns, threads = setting("CONNS", 32), setting("THREADS", 1)
    head = (
        f"ops fixture ({profile} build), autoscale {autoscale}, from 1 worker; wrk -t{threads} -c{conns} "
        f"-H 'Connection: close' on /spin-{setting('SPIN', 2)} from {load_on:.0f} s to "
        f"{load_off:.0f} s: {rps} requests/s, "
        f"{'errors: ' + '; '.join(errors) if errors else 'no errors'}. {os.cpu_count()} CPUs.\n\n"
    )
    with open(OUT + ".md", "w") as f:
        f.write(head + table(rows))
    plot(rows, load_on, load_off, int(autoscale.split("..")[1]))
    print(head + table(rows))


def replot():
    """PLOT_ONLY: the png again from bench/autoscale.csv, without a run."""
    with open(OUT + ".csv", newline="") as f:
        rows = [
            {"t": int(r["t"]), "load": r["load"], "workers": int(r["workers"]), "cpu": float(r["cpu"])}
            for r in csv.DictReader(f)
        ]
    loaded = [r["t"] for r in rows if r["load"] == "wrk"]
    most = int(os.environ.get("AUTOSCALE", "1..4").split("..")[1])
    plot(rows, min(loaded), max(loaded) + 1, most)


if __name__ == "__main__":
    if os.environ.get("PLOT_ONLY"):
        replot()
    else:
        main()
