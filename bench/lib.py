"""Plumbing of the benchmark harness: processes, a tiny Redis client, Prometheus text,
/proc sampling, a TCP proxy that can simulate an outage, and statistics.

Standard library only, so the harness runs on any python3 (matplotlib is needed only for
the plot, in bench/plot.py).
"""

import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- statistics ---


def summary(values):
    """Median and spread of repetitions; `spread` is (max - min) / median."""
    values = [value for value in values if value is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "spread": None, "n": 0, "values": []}
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / median if median else None,
        "n": len(values),
        "values": values,
    }


def ratio(numerator, denominator):
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# --- processes ---


class Process:
    """A child process whose stdout follows benchraw's protocol (`progress N T`,
    `result {json}`, `ready`); other lines are kept in a log file."""

    def __init__(self, name, argv, env=None, log_path=None, cwd=None):
        self.name = name
        self.argv = argv
        self.progress = []  # (count, unix seconds)
        self.result = None
        self.ready = threading.Event()
        self.lines = []
        self.log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.popen.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("progress "):
                _, count, at = line.split()
                self.progress.append((int(count), float(at)))
            elif line.startswith("result "):
                self.result = json.loads(line[len("result ") :])
            elif line == "ready":
                self.ready.set()
            else:
                self.lines.append(line)
                if self.log_file is not subprocess.DEVNULL:
                    self.log_file.write(raw)
                    self.log_file.flush()

    def count(self):
        return self.progress[-1][0] if self.progress else 0

    def wait(self, timeout=None):
        code = self.popen.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return code

    def alive(self):
        return self.popen.poll() is None

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL after `timeout` s. Only this process (its own session)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.reader.join(timeout=5)
        return self.popen.returncode


def run_json(argv, env=None, timeout=600, log_path=None):
    """Runs a benchraw command to completion and returns its `result` object."""
    process = Process(os.path.basename(argv[0]), argv, env=env, log_path=log_path)
    code = process.wait(timeout=timeout)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {code}: {process.lines[-5:]}")
    return process.result


# --- /proc ---


def proc_stat(pid):
    """(cpu seconds user+system, rss bytes, peak rss bytes) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            fields = stat_file.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        rss = hwm = 0
        with open(f"/proc/{pid}/status") as status_file:
            for line in status_file:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
        return cpu, rss, hwm
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


class Sampler:
    """Samples cpu and rss of some pids every `interval` seconds in the background."""

    def __init__(self, pids, interval=0.25):
        self.pids = dict(pids)  # name -> pid
        self.interval = interval
        self.samples = {name: [] for name in self.pids}  # (t, cpu, rss, hwm)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            now = time.time()
            for name, pid in self.pids.items():
                stat = proc_stat(pid)
                if stat:
                    self.samples[name].append((now,) + stat)
            self.stopping.wait(self.interval)

    def stop(self):
        self.stopping.set()
        self.thread.join()
        return self.samples


# --- redis ---


class Redis:
    """Just enough RESP2 for INFO, CLIENT LIST, PUBSUB, CONFIG and PING."""

    def __init__(self, port, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.buffer = b""

    def close(self):
        self.sock.close()

    def command(self, *args):
        payload = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = str(arg).encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        self.sock.sendall(payload)
        return self._reply()

    def _line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, size):
        while len(self.buffer) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exactly(size).decode(errors="replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise RuntimeError(f"unexpected redis reply {line!r}")

    def info(self, section="all"):
        text = self.command("INFO", section)
        fields = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields[key] = value
        return fields

    def pubsub_clients(self):
        """[(name/addr, omem bytes)] of clients in pub/sub mode."""
        clients = []
        for line in self.command("CLIENT", "LIST", "TYPE", "pubsub").splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            clients.append((fields.get("addr"), int(fields.get("omem", 0)), int(fields.get("tot-mem", 0))))
        return clients

    def subscribers(self, channel):
        reply = self.command("PUBSUB", "NUMSUB", channel)
        return int(reply[1])


class RedisServer:
    """A private redis-server on a free loopback port: no persistence, the default pub/sub
    output-buffer limits (32mb hard, 8mb/60s soft) set explicitly, its own log."""

    DROP_LINE = "overcoming of output buffer limits"

    def __init__(self, workdir, name):
        self.port = free_port()
        self.dir = os.path.join(workdir, f"redis-{name}")
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "redis.log")
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        self.popen = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                "--logfile", self.log_path,
                "--client-output-buffer-limit", "pubsub 32mb 8mb 60",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        deadline = time.time() + 10
        while True:
            try:
                client = Redis(self.port)
                client.command("PING")
                client.close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}"

    def client(self):
        return Redis(self.port)

    def drops(self):
        """How many times this server closed a client for its output buffer."""
        try:
            with open(self.log_path, errors="replace") as log_file:
                return sum(1 for line in log_file if self.DROP_LINE in line)
        except FileNotFoundError:
            return 0

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class OmemWatcher:
    """Largest output buffer (omem) of any pub/sub client, sampled every 100 ms."""

    def __init__(self, server):
        self.client = server.client()
        self.peak = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                for _, omem, _ in self.client.pubsub_clients():
                    self.peak = max(self.peak, omem)
            except (OSError, RuntimeError):
                pass
            self.stopping.wait(0.1)

    def stop(self):
        self.stopping.set()
        self.thread.join()
        self.client.close()
        return self.peak


# --- prometheus ---

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url, timeout=5):
    """{name: [(labels dict, value)]} of a Prometheus text endpoint."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    metrics = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if not match:
            continue
        labels = dict(LABEL.findall(match.group(3) or ""))
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        metrics.setdefault(match.group(1), []).append((labels, value))
    return metrics


def metric(metrics, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for sample_labels, value in metrics.get(name, []):
        if all(sample_labels.get(key) == value_wanted for key, value_wanted in labels.items()):
            total += value
    return total


def http_ok(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def histogram(metrics, name, **labels):
    """[(upper bound, cumulative count)] of one histogram, +Inf last."""
    buckets = {}
    for sample_labels, value in metrics.get(name + "_bucket", []):
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items()):
            bound = sample_labels["le"]
            upper = float("inf") if bound == "+Inf" else float(bound)
            buckets[upper] = buckets.get(upper, 0.0) + value
    return sorted(buckets.items())


def histogram_delta(after, before):
    before_map = dict(before)
    return [(bound, count - before_map.get(bound, 0.0)) for bound, count in after]


def quantile(buckets, q):
    """Prometheus-style histogram_quantile: linear interpolation inside the bucket.
    Returns (estimate, bucket upper bound) in the histogram's unit, or (None, None)."""
    if not buckets:
        return None, None
    total = buckets[-1][1]
    if total <= 0:
        return None, None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower_bound, upper
            if count == lower_count:
                return upper, upper
            return lower_bound + (upper - lower_bound) * (rank - lower_count) / (count - lower_count), upper
        lower_bound, lower_count = upper, count
    return buckets[-1][0], buckets[-1][0]


# --- outage proxy ---


class Proxy:
    """A TCP forwarder 127.0.0.1:port -> target that can go dark: `down()` closes the
    listener and every open connection (clients see refused/reset connections, like a
    crashed server), `up()` listens again on the same port."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.listener = None
        self.connections = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.up()

    def up(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self):
        listener, self.listener = self.listener, None
        if listener:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self.lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            try:
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                connection.close()
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        self.down()

    def _accept(self, listener):
        while not self.stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client, upstream):
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                if self.stopping.is_set():
                    break
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    (upstream if sock is client else client).sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for sock in sockets:
                try:
                    sock.close()
                except OSError:
                    pass
            with self.lock:
                self.connections.discard(client)
                self.connections.discard(upstream)
