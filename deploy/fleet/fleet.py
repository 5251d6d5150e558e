#!/usr/bin/env python3
"""A fleet of `cluster` hosts behind haproxy, built on this machine, operated under load.

Run as root (it creates network namespaces). Three network namespaces play three hosts, each
with its own address on a bridge in a private range (10.250.X.0/24), each running
examples/http (2 workers) on that address with the master's status server beside it; haproxy,
in the root namespace, balances 127.0.0.1:<port> over them with health checks on each
master's /readyz (deploy/fleet/haproxy.cfg says why each setting). Client processes load
haproxy (keep-alive and connection-per-request) and count every request, served or failed,
while the driver runs, one after another:

- reload:    `clusterctl reload --wait` on every host, one host after another;
- deploy:    a new binary on every host, host by host: SIGTERM to the master (its /readyz
             turns 503 while the workers serve on for SHUTDOWN_DELAY_MS), haproxy takes the
             host out, the master exits, the new one starts, haproxy takes it back in;
- host-loss: SIGKILL to one master (its workers die with it, PDEATHSIG); the time until
             haproxy marks it down is measured from its stats socket; then it is restarted;
- partition: one host's link goes down until haproxy takes it out, then comes back up.

It prints a table (and writes JSON with --json). Everything it starts is stopped by pid and
every namespace and link it creates is deleted when it exits, however it exits short of
SIGKILL; the names carry the driver's pid (clfl<pid>..., clfl-<pid>-h1), and a run first
removes whatever an earlier run that was killed left behind (`--cleanup` does only that).

    deploy/fleet/fleet.py                  # the long form: release build, 3 rounds
    deploy/fleet/fleet.py --short          # the CI form (under 2 minutes)
    deploy/fleet/fleet.py --http-bin target/debug/examples/http \\
                          --clusterctl target/debug/clusterctl --short --json out.json

Traffic goes only to 127.0.0.1 and to the namespaces' own addresses.
"""

import argparse
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

PREFIX = "clfl"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
APP_PORT = 8000
STATUS_PORT = 8001
# Every wait for something that must happen is bounded by this: far above what a loaded
# 2-core machine needs, so that only a real fault reaches it.
WAIT = 60.0


class FleetError(Exception):
    """Something the fleet needed did not happen; the message says what."""


def log(msg):
    print(f"fleet: {msg}", file=sys.stderr, flush=True)


def run(args, check=True):
    """Runs a command to completion; its output is returned, an error raised with it."""
    done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise FleetError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def wait_for(what, timeout, cond, every=0.02):
    """Polls `cond` until it returns something true, and returns it; raises after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise FleetError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ------------------------------------------------------------------------------------------
# Leftovers of runs that were killed
# ------------------------------------------------------------------------------------------


def owner_alive(pid):
    """Whether `pid` is a fleet driver still running (then its namespaces are its own), not
    one of the load clients, which run the same file. This run's own pid counts as dead:
    what carries it before the run has made anything was left by an earlier process that had
    the same pid."""
    if pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(b"fleet.py") for a in argv) and b"client" not in argv


def kill_netns_processes(ns):
    for pid in run(["ip", "netns", "pids", ns], check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def clean_leftovers():
    """Removes the namespaces, links, processes and directories of dead runs (any prefix
    `clfl` name whose driver pid is gone)."""
    for line in run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}-(\d+)-h\d+", name)
        if m and not owner_alive(int(m.group(1))):
            log(f"removing namespace {name} left by run {m.group(1)}")
            kill_netns_processes(name)
            run(["ip", "netns", "del", name], check=False)
    for line in run(["ip", "-o", "link", "show"], check=False).splitlines():
        m = re.match(rf"\d+: ({PREFIX}(\d+)[a-z]\d*)[@:]", line)
        if m and not owner_alive(int(m.group(2))):
            log(f"removing link {m.group(1)} left by run {m.group(2)}")
            run(["ip", "link", "del", m.group(1)], check=False)
    tmp = "/tmp"
    for entry in os.listdir(tmp):
        m = re.fullmatch(rf"{PREFIX}-(\d+)", entry)
        if m and not owner_alive(int(m.group(1))):
            path = os.path.join(tmp, entry)
            pidfile = os.path.join(path, "haproxy.pid")
            try:
                with open(pidfile) as f:
                    pid = int(f.read().strip())
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if path.encode() in f.read():
                        log(f"stopping haproxy {pid} left by run {m.group(1)}")
                        os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# The network: a bridge in the root namespace, one namespace per host
# ------------------------------------------------------------------------------------------


class Net:
    def __init__(self, run_id, hosts):
        self.run_id = run_id
        self.bridge = f"{PREFIX}{run_id}b"
        self.namespaces = [f"{PREFIX}-{run_id}-h{i + 1}" for i in range(hosts)]
        self.veths = [f"{PREFIX}{run_id}v{i + 1}" for i in range(hosts)]
        self.peers = [f"{PREFIX}{run_id}n{i + 1}" for i in range(hosts)]
        self.subnet = self.free_subnet()
        self.gateway = f"{self.subnet}.1"
        self.addrs = [f"{self.subnet}.{11 + i}" for i in range(hosts)]
        self.created_ns = []
        self.created_links = []

    def free_subnet(self):
        used = run(["ip", "-4", "-o", "addr", "show"]) + run(["ip", "-4", "route", "show"])
        for k in range(250):
            third = (self.run_id + k) % 250
            if f"10.250.{third}." not in used:
                return f"10.250.{third}"
        raise FleetError("no free /24 in 10.250.0.0/16 for the fleet")

    def up(self):
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.created_links.append(self.bridge)
        run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        for ns, veth, peer, addr in zip(self.namespaces, self.veths, self.peers, self.addrs):
            run(["ip", "netns", "add", ns])
            self.created_ns.append(ns)
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
            self.created_links.append(veth)
            run(["ip", "link", "set", peer, "netns", ns])
            run(["ip", "link", "set", veth, "master", self.bridge, "up"])
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", peer])
            run(["ip", "-n", ns, "link", "set", peer, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def set_link(self, index, up):
        run(["ip", "link", "set", self.veths[index], "up" if up else "down"])

    def down(self):
        for ns in self.created_ns:
            kill_netns_processes(ns)
            run(["ip", "netns", "del", ns], check=False)
        # A namespace's end of a veth pair goes with it, and takes its peer along; what is
        # still there (a pair whose peer never moved) goes here.
        existing = run(["ip", "-o", "link", "show"], check=False)
        for link in reversed(self.created_links):
            if re.search(rf"\d+: {link}[@:]", existing):
                run(["ip", "link", "del", link], check=False)


# ------------------------------------------------------------------------------------------
# Hosts: one examples/http cluster each
# ------------------------------------------------------------------------------------------


def stop_process(proc, sig, timeout):
    """Sends `sig` to `proc` (a Popen) unless it has exited, waits up to `timeout`, then
    SIGKILLs it; always reaps it."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Host:
    def __init__(self, name, ns, addr, run_dir, source_bin, token, delay_ms, workers):
        self.name = name
        self.ns = ns
        self.addr = addr
        self.dir = os.path.join(run_dir, name)
        os.makedirs(self.dir)
        # A copy per host: a deploy replaces one host's binary at a time.
        self.binary = os.path.join(self.dir, "http")
        shutil.copyfile(source_bin, self.binary)
        os.chmod(self.binary, 0o755)
        self.control = os.path.join(self.dir, "control.sock")
        self.log_path = os.path.join(self.dir, "output.log")
        self.token = token
        self.delay_ms = delay_ms
        self.workers = workers
        self.proc = None
        self.deploys = 0

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
        env.update(
            HOST=self.addr,
            PORT=str(APP_PORT),
            STATUS_PORT=f"{self.addr}:{STATUS_PORT}",
            STATUS_TOKEN=self.token,
            WORKERS=str(self.workers),
            SHUTDOWN_DELAY_MS=str(self.delay_ms),
            CLUSTER_NAME=f"fleet-{self.name}",
            CLUSTER_CONTROL_PATH=self.control,
        )
        out = open(self.log_path, "ab")
        # `ip netns exec` enters the namespace and execs the program: the pid is the master's.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, self.binary],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    def readyz(self):
        conn = http.client.HTTPConnection(self.addr, STATUS_PORT, timeout=1)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()

    def wait_ready(self):
        def ready():
            if self.proc.poll() is not None:
                raise FleetError(f"{self.name}'s master exited ({self.proc.returncode}):\n{self.tail()}")
            return self.readyz() == 200

        wait_for(f"{self.name}'s /readyz", WAIT, ready)

    def tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def exe_hash(self):
        """The hash of the executable the master runs (its inode, whatever the path now is)."""
        with open(f"/proc/{self.proc.pid}/exe", "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def deploy_binary(self):
        """Puts a new build in place the way a deploy tool does: new bytes (the old ones plus
        a marker an ELF loader ignores) written beside, then renamed over the old path."""
        self.deploys += 1
        with open(self.binary, "rb") as f:
            data = f.read() + f"\0fleet deploy {self.deploys}\0".encode()
        tmp = self.binary + ".new"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        os.rename(tmp, self.binary)
        return hashlib.sha256(data).hexdigest()

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, self.delay_ms / 1000 + 10)

    def ask_to_stop(self):
        """SIGTERM to the master without waiting: the hosts then stop side by side."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def netns_pids(self):
        return run(["ip", "netns", "pids", self.ns], check=False).split()


# ------------------------------------------------------------------------------------------
# haproxy
# ------------------------------------------------------------------------------------------


class Haproxy:
    def __init__(self, run_dir, port, hosts):
        self.run_dir = run_dir
        self.port = port
        self.socket = os.path.join(run_dir, "haproxy.sock")
        self.cfg = os.path.join(run_dir, "haproxy.cfg")
        with open(os.path.join(HERE, "haproxy.cfg")) as f:
            template = f.read()
        servers = "\n".join(f"    server {h.name} {h.addr}:{APP_PORT}" for h in hosts)
        text = (
            template.replace("@RUN_DIR@", run_dir)
            .replace("@PORT@", str(port))
            .replace("@STATUS_PORT@", str(STATUS_PORT))
            .replace("@SERVERS@", servers)
        )
        with open(self.cfg, "w") as f:
            f.write(text)
        run(["haproxy", "-c", "-q", "-f", self.cfg])
        self.proc = None

    def start(self):
        out = open(os.path.join(self.run_dir, "haproxy.log"), "ab")
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", self.cfg],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        with open(os.path.join(self.run_dir, "haproxy.pid"), "w") as f:
            f.write(str(self.proc.pid))
        wait_for("haproxy's stats socket", WAIT, lambda: self.try_stats() is not None)

    def try_stats(self):
        try:
            return self.stats()
        except OSError:
            return None

    def stats(self):
        """`show stat`: {svname: row} of the `hosts` backend, the BACKEND row included."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.socket)
            s.sendall(b"show stat\n")
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            raise OSError("haproxy's stats socket answered no CSV")
        header = lines[0][2:].split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "hosts":
                rows[row["svname"]] = row
        return rows

    def status(self, server):
        return self.stats()[server]["status"]

    def wait_status(self, server, up, timeout=WAIT):
        """Waits until haproxy has `server` in (up) or out (not up), polling every 5 ms, and
        returns when that was seen (time.monotonic())."""
        want = "UP" if up else "DOWN"
        # "UP 1/2" is up and failing checks, "DOWN 1/2" down and passing them.
        wait_for(f"haproxy to mark {server} {want}", timeout,
                 lambda: self.status(server).startswith(want), every=0.005)
        return time.monotonic()

    def retries(self):
        row = self.stats()["BACKEND"]
        return int(row.get("wretr") or 0), int(row.get("wredis") or 0)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 5)


# ------------------------------------------------------------------------------------------
# Load clients (separate processes: `fleet.py client ...`)
# ------------------------------------------------------------------------------------------

IO_TIMEOUT = 10.0


class Response:
    __slots__ = ("status", "close", "server")


def read_response(f):
    """Reads one HTTP/1.1 response from a buffered socket file; None on EOF before it."""
    line = f.readline()
    if not line:
        return None
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"bad status line {line!r}")
    r = Response()
    r.status = int(parts[1])
    r.close = parts[0] == b"HTTP/1.0"
    r.server = "?"
    length = None
    while True:
        line = f.readline()
        if not line:
            raise EOFError("EOF inside the response head")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            r.close = value.lower() == b"close"
        elif name == b"x-fleet-server":
            r.server = value.decode(errors="replace")
    if length is None:
        raise ValueError("response without Content-Length")
    body = f.read(length)
    if len(body) != length:
        raise EOFError("EOF inside the response body")
    return r


def client_thread(port, keepalive, stop, counts, lock, started):
    request = (
        b"GET / HTTP/1.1\r\nHost: fleet\r\n"
        + (b"" if keepalive else b"Connection: close\r\n")
        + b"\r\n"
    )
    sock = f = None
    first = True
    while not stop.is_set():
        began = time.monotonic()
        failure = None
        response = None
        fresh = sock is None
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
                f = sock.makefile("rb")
            sock.sendall(request)
            response = read_response(f)
            if response is None:
                failure = "eof before the response"
            elif response.status != 200:
                failure = f"status {response.status}"
        except socket.timeout:
            failure = "timeout"
        except ConnectionRefusedError:
            failure = "connect refused"
        except (ConnectionResetError, BrokenPipeError):
            failure = "reset"
        except (OSError, ValueError, EOFError) as e:
            failure = f"{type(e).__name__}: {e}"
        with lock:
            counts["slowest_ms"] = max(counts["slowest_ms"], (time.monotonic() - began) * 1000)
            if failure is None:
                counts["served"] += 1
                per = counts["per_server"]
                per[response.server] = per.get(response.server, 0) + 1
            else:
                counts["failed"] += 1
                counts["reasons"][failure] = counts["reasons"].get(failure, 0) + 1
                counts["reused_connection_failures"] += 0 if fresh else 1
        if failure is None and first:
            first = False
            started.release()
        if failure is not None or not keepalive or response.close:
            if sock is not None:
                f.close()
                sock.close()
            sock = f = None
        if failure is not None:
            # Do not spin on a refusing address: a failed client waits a little.
            time.sleep(0.01)
    if sock is not None:
        f.close()
        sock.close()


def client_main(args):
    """Runs `--conns` connections (threads) against haproxy until stdin closes or
    --max-seconds pass, then prints the counts as JSON."""
    stop = threading.Event()
    lock = threading.Lock()
    started = threading.Semaphore(0)
    counts = {"served": 0, "failed": 0, "reasons": {}, "per_server": {},
              "reused_connection_failures": 0, "slowest_ms": 0.0}
    threads = [
        threading.Thread(target=client_thread,
                         args=(args.port, args.mode == "keepalive", stop, counts, lock, started),
                         daemon=True)
        for _ in range(args.conns)
    ]
    for t in threads:
        t.start()

    def watch_stdin():
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    deadline = time.monotonic() + args.max_seconds
    for _ in threads:
        if not started.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
    else:
        print("STARTED", flush=True)
    stop.wait(max(0.0, deadline - time.monotonic()))
    stop.set()
    for t in threads:
        t.join(IO_TIMEOUT + 1)
    with lock:
        print(json.dumps(counts), flush=True)


class Load:
    """The client processes of one operation."""

    def __init__(self, port, keepalive_conns, close_conns, max_seconds):
        self.procs = []
        for mode, conns in (("keepalive", keepalive_conns), ("close", close_conns)):
            if conns:
                self.procs.append(subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "client", "--port", str(port),
                     "--mode", mode, "--conns", str(conns), "--max-seconds", str(max_seconds)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in self.procs:
            line = p.stdout.readline().strip()
            if line != "STARTED":
                self.kill()
                raise FleetError(f"a load client did not start (said {line!r})")

    def stop(self):
        total = {"served": 0, "failed": 0, "reasons": {}, "per_server": {},
                 "reused_connection_failures": 0, "slowest_ms": 0.0}
        for p in self.procs:
            # EOF on its stdin stops a client; all of them at once.
            p.stdin.close()
            p.stdin = None
        for p in self.procs:
            try:
                out, _ = p.communicate(timeout=IO_TIMEOUT + 5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise FleetError("a load client did not stop")
            counts = json.loads(out.strip().splitlines()[-1])
            total["served"] += counts["served"]
            total["failed"] += counts["failed"]
            total["reused_connection_failures"] += counts["reused_connection_failures"]
            total["slowest_ms"] = max(total["slowest_ms"], counts["slowest_ms"])
            for key in ("reasons", "per_server"):
                for k, v in counts[key].items():
                    total[key][k] = total[key].get(k, 0) + v
        self.procs = []
        return total

    def kill(self):
        for p in self.procs:
            stop_process(p, signal.SIGKILL, 5)
        self.procs = []


# ------------------------------------------------------------------------------------------
# The fleet and its operations
# ------------------------------------------------------------------------------------------


class Fleet:
    def __init__(self, args):
        self.args = args
        self.run_id = os.getpid()
        self.run_dir = f"/tmp/{PREFIX}-{self.run_id}"
        self.net = None
        self.hosts = []
        self.haproxy = None
        self.load = None

    def up(self):
        os.makedirs(self.run_dir)
        self.net = Net(self.run_id, 3)
        self.net.up()
        token = secrets.token_hex(16)
        for i, (ns, addr) in enumerate(zip(self.net.namespaces, self.net.addrs)):
            host = Host(f"h{i + 1}", ns, addr, self.run_dir, self.args.http_bin, token,
                        self.args.shutdown_delay_ms, 2)
            self.hosts.append(host)
            host.start()
        for host in self.hosts:
            host.wait_ready()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.haproxy = Haproxy(self.run_dir, port, self.hosts)
        self.haproxy.start()
        for host in self.hosts:
            self.haproxy.wait_status(host.name, up=True)
        log(f"fleet up: haproxy on 127.0.0.1:{port}, hosts "
            + ", ".join(f"{h.name} {h.addr} (master {h.proc.pid})" for h in self.hosts))
        print(f"FLEET_UP run={self.run_id} port={port}", flush=True)

    def down(self):
        # A second Ctrl-C must not cut the teardown short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if self.load is not None:
            self.load.kill()
        for host in self.hosts:
            host.ask_to_stop()
        for host in self.hosts:
            host.stop()
        if self.haproxy is not None:
            self.haproxy.stop()
        if self.net is not None:
            self.net.down()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def under_load(self, name, operation):
        """Runs `operation` while the clients load haproxy; returns the row of the table."""
        a = self.args
        retries0 = self.haproxy.retries()
        self.load = Load(self.haproxy.port, a.keepalive_conns, a.close_conns, a.max_seconds)
        started = time.monotonic()
        try:
            details = operation() or {}
            time.sleep(a.tail)
        finally:
            counts = self.load.stop()
            self.load = None
        retries1 = self.haproxy.retries()
        row = {
            "operation": name,
            "seconds": round(time.monotonic() - started, 1),
            "served": counts["served"],
            "failed": counts["failed"],
            "failure_reasons": counts["reasons"],
            "served_per_host": counts["per_server"],
            "haproxy_retries": retries1[0] - retries0[0],
            "haproxy_redispatches": retries1[1] - retries0[1],
            "slowest_request_ms": round(counts["slowest_ms"]),
            "concurrency": self.load_concurrency(),
        }
        row.update(details)
        log(f"{name}: {row['served']} served, {row['failed']} failed {row['failure_reasons'] or ''}"
            f" {details}")
        return row

    def load_concurrency(self):
        return self.args.keepalive_conns + self.args.close_conns

    def workers(self, host):
        """{pid: generation} of the host's ready workers (not the draining ones), from
        `clusterctl list --json`."""
        out = self.clusterctl(host, "list", "--json")
        return {w["pid"]: w["generation"] for w in json.loads(out) if w["state"] == "ready"}

    def clusterctl(self, host, *args):
        done = subprocess.run([self.args.clusterctl, "-s", host.control, *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise FleetError(f"clusterctl {' '.join(args)} on {host.name} exited "
                             f"{done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout

    def reload_all(self):
        reload_ms, drained_ms = [], []
        for host in self.hosts:
            before = self.workers(host)
            began = time.monotonic()
            self.clusterctl(host, "reload", "--wait", "--timeout", "60s")
            replaced = time.monotonic()
            reload_ms.append(round((replaced - began) * 1000))
            after = self.workers(host)
            if not after or set(before) & set(after) or min(after.values()) <= max(before.values()):
                raise FleetError(f"{host.name}'s workers were not all replaced: {before} -> {after}")
            # `--wait` returns once the replacements serve; the old workers still drain their
            # keep-alive connections (haproxy's): the next host waits until they are done.
            wait_for(f"{host.name}'s old workers to drain and exit", WAIT,
                     lambda: not any(os.path.exists(f"/proc/{pid}") for pid in before))
            drained_ms.append(round((time.monotonic() - replaced) * 1000))
        return {"reload_ms": reload_ms, "drained_ms": drained_ms}

    def deploy_all(self):
        taken_out = []
        for host in self.hosts:
            new_hash = host.deploy_binary()
            old = host.proc
            sent = time.monotonic()
            old.send_signal(signal.SIGTERM)
            # The master's /readyz says 503 at once; haproxy takes the host out while the
            # workers still serve (SHUTDOWN_DELAY_MS), so nothing is sent to it after.
            out = self.haproxy.wait_status(host.name, up=False)
            taken_out.append(round((out - sent) * 1000))
            try:
                old.wait(WAIT)
            except subprocess.TimeoutExpired:
                raise FleetError(f"{host.name}'s old master did not exit within {WAIT:.0f} s")
            if old.returncode != 0:
                raise FleetError(f"{host.name}'s old master exited {old.returncode}:\n{host.tail()}")
            wait_for(f"{host.name}'s old workers to exit", WAIT, lambda: not host.netns_pids())
            host.start()
            host.wait_ready()
            if host.exe_hash() != new_hash:
                raise FleetError(f"{host.name}'s new master does not run the new binary")
            self.haproxy.wait_status(host.name, up=True)
        return {"taken_out_ms": taken_out}

    def lose_host(self):
        host = self.hosts[1]
        killed = time.monotonic()
        host.proc.send_signal(signal.SIGKILL)
        removed = self.haproxy.wait_status(host.name, up=False)
        host.proc.wait(WAIT)
        # PDEATHSIG: the workers die with their master, nothing is left in the namespace.
        wait_for(f"{host.name}'s workers to die with their master", WAIT,
                 lambda: not host.netns_pids())
        host.start()
        host.wait_ready()
        self.haproxy.wait_status(host.name, up=True)
        return {"host": host.name, "removal_ms": round((removed - killed) * 1000)}

    def partition(self):
        index = 2
        host = self.hosts[index]
        cut = time.monotonic()
        self.net.set_link(index, up=False)
        removed = self.haproxy.wait_status(host.name, up=False)
        time.sleep(self.args.partition_hold)
        healed = time.monotonic()
        self.net.set_link(index, up=True)
        back = self.haproxy.wait_status(host.name, up=True)
        return {"host": host.name, "removal_ms": round((removed - cut) * 1000),
                "back_in_ms": round((back - healed) * 1000)}

    def operate(self):
        rows = []
        operations = [("rolling reload", self.reload_all), ("deploy", self.deploy_all),
                      ("host loss", self.lose_host), ("partition", self.partition)]
        for round_no in range(self.args.rounds):
            for name, op in operations:
                label = name if self.args.rounds == 1 else f"{name} #{round_no + 1}"
                rows.append(self.under_load(label, op))
        return rows


def table(rows):
    head = ["operation", "requests served", "requests failed", "time to removal",
            "haproxy retries / redispatches", "slowest request", "notes"]
    lines = [head]
    for r in rows:
        removal = f"{r['removal_ms']} ms" if "removal_ms" in r else ""
        notes = []
        if "reload_ms" in r:
            notes.append("reload --wait: " + ", ".join(f"{t} ms" for t in r["reload_ms"])
                         + "; old workers gone after: "
                         + ", ".join(f"{t} ms" for t in r["drained_ms"]))
        if "taken_out_ms" in r:
            notes.append("out after SIGTERM: " + ", ".join(f"{t} ms" for t in r["taken_out_ms"]))
        if "back_in_ms" in r:
            notes.append(f"back in {r['back_in_ms']} ms after the link came up")
        if r["failure_reasons"]:
            notes.append("failures: " + ", ".join(f"{k} x{v}" for k, v in r["failure_reasons"].items()))
        lines.append([r["operation"], str(r["served"]), str(r["failed"]), removal,
                      f"{r['haproxy_retries']} / {r['haproxy_redispatches']}",
                      f"{r['slowest_request_ms']} ms", "; ".join(notes)])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines[1:]]
    return "\n".join(out)


def build_release():
    """Builds examples/http and clusterctl in release mode; returns their paths."""
    log("building examples/http and clusterctl (release)")
    subprocess.run(["cargo", "build", "--release", "--example", "http", "--bin", "clusterctl",
                    "--features", "http,ctl"], cwd=REPO, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return (os.path.join(target, "release", "examples", "http"),
            os.path.join(target, "release", "clusterctl"))


def raise_exit(signum, _frame):
    # Turns SIGINT/SIGTERM/SIGHUP into an exception, so that the `finally` tears down.
    raise SystemExit(128 + signum)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="(internal) one load-client process")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--mode", choices=["keepalive", "close"], required=True)
    client.add_argument("--conns", type=int, required=True)
    client.add_argument("--max-seconds", type=float, required=True)
    parser.add_argument("--short", action="store_true",
                        help="the CI form: one round, fewer clients, shorter holds")
    parser.add_argument("--cleanup", action="store_true",
                        help="only remove what killed runs left behind, then exit")
    parser.add_argument("--http-bin", help="examples/http to run (default: build it, release)")
    parser.add_argument("--clusterctl", help="clusterctl to use (default: build it, release)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--json", help="also write the rows to this file as JSON")
    parser.add_argument("--shutdown-delay-ms", type=int,
                        help="each host's SHUTDOWN_DELAY_MS (default: 1500 short, 3000 long); "
                             "0 shows what a deploy costs without it")
    args = parser.parse_args()
    if args.command == "client":
        client_main(args)
        return 0
    if os.geteuid() != 0:
        print("fleet: run as root: it creates network namespaces and links", file=sys.stderr)
        return 2
    for tool in ("ip", "haproxy"):
        if shutil.which(tool) is None:
            print(f"fleet: `{tool}` is not installed (apt-get install -y "
                  f"{'iproute2' if tool == 'ip' else tool})", file=sys.stderr)
            return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_exit)
    clean_leftovers()
    if args.cleanup:
        return 0
    if (args.http_bin is None) != (args.clusterctl is None):
        print("fleet: give both --http-bin and --clusterctl, or neither", file=sys.stderr)
        return 2
    if args.http_bin is None:
        args.http_bin, args.clusterctl = build_release()
    args.rounds = args.rounds or (1 if args.short else 3)
    args.keepalive_conns, args.close_conns = (4, 2) if args.short else (8, 4)
    if args.shutdown_delay_ms is None:
        args.shutdown_delay_ms = 1500 if args.short else 3000
    args.partition_hold = 1.0 if args.short else 5.0
    args.tail = 0.5 if args.short else 2.0
    # A client runs at most this long, even if the driver vanished without closing its stdin.
    args.max_seconds = 300
    fleet = Fleet(args)
    try:
        fleet.up()
        rows = fleet.operate()
    except FleetError as e:
        print(f"fleet: {e}", file=sys.stderr)
        return 1
    finally:
        fleet.down()
    print(table(rows), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": fleet.run_id, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
