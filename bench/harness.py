#!/usr/bin/env python3
"""The benchmark harness behind `bench/run`: every scenario measures ingestd and its
baseline in the same invocation, on loopback, and reports ratios (absolute numbers on a
shared 2-core machine are noise; ratios from one run are not).

Scenarios (names for --only; README "Benchmarks" explains each):
  ingest_ceiling  pub/sub -> decode -> batch -> blackhole sinks vs a bare redis-rs subscriber
  end_to_end      the shipped pipeline (5 stores) vs Benthos v4.27.0 doing the same writes
  per_sink        each store sink vs a raw-client loop writing the same rows with the same crate
  latency         publish -> written percentiles per sink at a fixed moderate rate
  outage          RSS and loss while the DynamoDB endpoint is dead for 30 s
  unscraped       RSS growth when nobody scrapes /metrics
  diagnostics     decoder cost, bytes per queued event, cost of fan-out (before/after figures)

Everything it starts (private redis-servers, ingestd, Benthos, publishers, a TCP proxy)
is stopped by pid at the end; what it creates in the shared stores is dropped.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib  # noqa: E402
from lib import log  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
SINKS = ["mongodb", "cassandra", "dynamodb", "leaderboard", "rate_counter"]
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "benchlocal",
    "AWS_SECRET_ACCESS_KEY": "benchlocal",
    "AWS_REGION": "us-east-1",
}

# The delivery settings of pipelines/analytics.toml, which the baselines copy: events per
# write call and calls in flight (for cassandra and dynamodb: requests in flight, i.e.
# max_in_flight x max_concurrent_partitions / max_concurrent_requests).
RAW_SHAPE = {
    "mongodb": {"batch": 1000, "concurrency": 4},
    "cassandra": {"batch": 50, "concurrency": 64},
    "dynamodb": {"batch": 25, "concurrency": 64},
    "leaderboard": {"batch": 2000, "concurrency": 4},
    "rate_counter": {"batch": 2000, "concurrency": 4},
}

# Sustained check: offered rates as fractions of a tool's own median burst throughput; a
# rate passes when the slowest sink finishes within SUSTAINED_MAX_LAG_S of the publisher and
# every store holds every event.
SUSTAINED_FRACTIONS = [0.9, 0.75, 0.6, 0.45]
SUSTAINED_MAX_LAG_S = 2.0

TARGETS = {
    "ingest_ceiling_ratio": 0.9,
    "end_to_end_vs_benthos": 2.0,
    "per_sink_ratio": 0.8,
    "peak_rss_mib": 100,
}


class Settings:
    def __init__(self, quick, reps, scale, latency_rate, outage_seconds, latency_seconds=0, sustained_seconds=None):
        self.quick = quick
        self.reps = reps if reps else (1 if quick else 3)
        s = scale
        self.ceiling_events = int((300_000 if quick else 1_000_000) * s)
        self.flat_events = int((300_000 if quick else 1_000_000) * s)
        self.ceiling_publishers = 2
        self.e2e_events = int((15_000 if quick else 40_000) * s)
        self.e2e_warmup = 1_000 if quick else 2_000
        self.sustained_seconds = (0 if quick else 15) if sustained_seconds is None else sustained_seconds
        # About 3 s of raw-client work each (quick: about 1 s).
        base = {
            "mongodb": 40_000,
            "cassandra": 300_000,
            "dynamodb": 25_000,
            "leaderboard": 360_000,
            "rate_counter": 320_000,
        }
        self.sink_events = {name: int(count * s * (0.3 if quick else 1)) for name, count in base.items()}
        self.latency_rate = latency_rate or (500 if quick else 1000)
        self.latency_seconds = latency_seconds or (8 if quick else 20)
        self.latency_warmup = 3
        self.outage_rate = 1000
        self.outage_seconds = outage_seconds or (10 if quick else 30)


# queue.max_bytes of the sink taken down in the outage scenario.
OUTAGE_QUEUE_MAX_MIB = 4


class Bench:
    def __init__(self, args):
        self.args = args
        self.settings = Settings(
            args.quick, args.reps, args.scale, args.latency_rate, args.outage_seconds,
            getattr(args, "latency_seconds", 0), getattr(args, "sustained_seconds", None))
        self.run_id = "b" + datetime.datetime.now(datetime.timezone.utc).strftime("%m%d%H%M%S")
        self.workdir = os.path.join(args.work, self.run_id)
        os.makedirs(self.workdir, exist_ok=True)
        self.ingestd = args.ingestd
        self.benchraw = args.benchraw
        self.benthos = args.benthos if args.benthos and os.path.exists(args.benthos) else None
        self.mongo_db = f"bench_{self.run_id}"
        self.keyspace = f"bench_{self.run_id}"
        self.dynamo_prefix = f"bench_{self.run_id}_"
        self.children = []  # every Process/RedisServer/Proxy started, for the final stop
        self.results = {}

    # --- helpers ---

    def track(self, thing):
        self.children.append(thing)
        return thing

    def stop_all(self):
        for thing in reversed(self.children):
            try:
                thing.stop()
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass

    def wait_services(self, timeout=240):
        """The shared services are restarted by other people's tests now and then: wait until
        `deploy/local/services status` says every one answers."""
        script = os.path.join(REPO, "deploy", "local", "services")
        deadline = time.time() + timeout
        while True:
            status = subprocess.run([script, "status"], capture_output=True, text=True)
            if status.returncode == 0:
                return
            if time.time() > deadline:
                raise RuntimeError(f"services not all up after {timeout} s: {status.stdout.strip()}")
            log("waiting for the local services: " + " | ".join(
                line for line in status.stdout.splitlines() if " up " not in line))
            time.sleep(10)

    def attempt(self, what, function, *args, **kwargs):
        """Runs one repetition; if it fails (the shared services are restarted by other
        people's tests now and then), waits for the services and tries once more."""
        started = len(self.children)
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - retried once, then reported
            log(f"{what} failed ({type(error).__name__}: {error}); waiting for the services, then once more")
            for thing in reversed(self.children[started:]):
                try:
                    thing.stop()
                except Exception:  # noqa: BLE001 - cleanup must go on
                    pass
            self.wait_services()
            return function(*args, **kwargs)

    def redis(self, name):
        return self.track(lib.RedisServer(self.workdir, name))

    def publish(self, redis_url, channel, count, prefix, rate=0, publishers=1, log_name="publish"):
        """Runs `publishers` benchraw publishers on disjoint ranges; returns (results, t0)."""
        share = count // publishers
        processes = []
        t0 = time.time()
        for index in range(publishers):
            first = index * share
            this_count = share if index < publishers - 1 else count - first
            argv = [
                self.benchraw, "publish", "--url", redis_url, "--channel", channel,
                "--count", str(this_count), "--first", str(first), "--rate", str(rate // publishers),
                "--id-prefix", prefix,
            ]
            processes.append(self.track(lib.Process(
                "publish", argv, log_path=os.path.join(self.workdir, f"{log_name}.log"))))
        results = []
        for process in processes:
            process.wait(timeout=900)
            results.append(process.result or {"sent": process.count(), "receivers": 0, "error": "no result"})
        return results, t0

    def start_ingestd(self, name, pipeline_toml, env, redis_url):
        pipelines = os.path.join(self.workdir, name, "pipelines")
        os.makedirs(pipelines, exist_ok=True)
        with open(os.path.join(pipelines, "analytics.toml"), "w") as pipeline_file:
            pipeline_file.write(pipeline_toml)
        port = lib.free_port()
        full_env = dict(AWS_ENV)
        full_env.update({
            "INGESTD_REDIS__URL": redis_url,
            "INGESTD_HTTP__LISTEN": f"127.0.0.1:{port}",
            "INGESTD_LOG__LEVEL": "warn",
            "INGESTD_DEAD_LETTER__STREAM": "bench:dead-letter",
            "RUST_LOG": "warn",
        })
        full_env.update(env)
        process = self.track(lib.Process(
            "ingestd",
            [self.ingestd, "--pipelines", pipelines, "run"],
            env=full_env,
            log_path=os.path.join(self.workdir, name, "ingestd.log"),
            cwd=os.path.join(self.workdir, name),
        ))
        process.http = f"http://127.0.0.1:{port}"
        wait_ready(process, "/readyz", f"ingestd ({name})", f"{self.workdir}/{name}/ingestd.log")
        return process

    def start_benthos(self, name, env):
        port = lib.free_port()
        full_env = dict(AWS_ENV)
        full_env.update(env)
        full_env["BENCH_HTTP_ADDRESS"] = f"127.0.0.1:{port}"
        process = self.track(lib.Process(
            "benthos",
            [self.benthos, "-c", os.path.join(BENCH_DIR, "benthos", "analytics.yaml")],
            env=full_env,
            log_path=os.path.join(self.workdir, f"{name}-benthos.log"),
        ))
        process.http = f"http://127.0.0.1:{port}"
        wait_ready(process, "/ready", f"benthos ({name})", f"{self.workdir}/{name}-benthos.log")
        return process

    def wait_subscribed(self, server, channel, timeout=30):
        client = server.client()
        try:
            deadline = time.time() + timeout
            while client.subscribers(channel) < 1:
                if time.time() > deadline:
                    raise RuntimeError(f"nobody subscribed to {channel} after {timeout} s")
                time.sleep(0.05)
        finally:
            client.close()

    @staticmethod
    def ingestd_written(process, sinks):
        metrics = lib.scrape(process.http + "/metrics")
        return {sink: lib.metric(metrics, "ingestd_sink_events_written_total", sink=sink) for sink in sinks}

    @staticmethod
    def spilled(process):
        """Events ingestd wrote to its spool (queues full), all sinks."""
        try:
            metrics = lib.scrape(process.http + "/metrics")
        except OSError:
            return None
        return lib.metric(metrics, "ingestd_spool_records_total", op="written")

    @staticmethod
    def benthos_written(process, sinks):
        metrics = lib.scrape(process.http + "/metrics")
        return {sink: lib.metric(metrics, "output_sent", label=sink) for sink in sinks}

    def wait_counts(self, read, target, stall_seconds, interval=0.05, overall=900):
        """Polls `read()` (a dict of counts) until every count reaches `target` or nothing
        moves for `stall_seconds`. Returns (trace [(t, min count)], t_done or None, last)."""
        trace = []
        last_change = time.time()
        last_min = None
        started = time.time()
        counts = {}
        self.last_done_at = {}
        while True:
            now = time.time()
            try:
                counts = read()
            except OSError:
                counts = counts or {}
            for name, value in counts.items():
                if value >= target and name not in self.last_done_at:
                    self.last_done_at[name] = now
            low = min(counts.values()) if counts else 0
            trace.append((now, low))
            if low >= target:
                return trace, now, counts
            if low != last_min:
                last_min, last_change = low, now
            if now - last_change > stall_seconds or now - started > overall:
                return trace, None, counts
            time.sleep(interval)

    def count_stores(self, names, days):
        argv = [self.benchraw, "count",
                "--mongo", f"{self.mongo_db}.{names['collection']}",
                "--cassandra", f"{self.keyspace}.{names['table']}",
                "--days", ",".join(days),
                "--dynamo-table", names["dynamo_table"],
                "--redis-url", names["redis_url"],
                "--leaderboard-keys", ",".join(names["lb_prefix"] + day for day in days),
                "--leaderboard-sink-id", "analytics.leaderboard",
                "--rate-prefix", names["rate_prefix"]]
        return lib.run_json(argv, env=AWS_ENV, timeout=300, log_path=os.path.join(self.workdir, "count.log"))

    @staticmethod
    def days_around(t0, t1):
        days = set()
        for moment in (t0, t1):
            days.add(datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).strftime("%Y-%m-%d"))
        return sorted(days)

    @staticmethod
    def window_rate(trace, total, low=0.1, high=0.9):
        """Steady-state rate between the times the count crossed low*total and high*total
        (linear interpolation between polls)."""

        def crossing(fraction):
            goal = fraction * total
            previous = None
            for moment, count in trace:
                if count >= goal:
                    if previous is None or count == previous[1]:
                        return moment
                    t_prev, c_prev = previous
                    return t_prev + (moment - t_prev) * (goal - c_prev) / (count - c_prev)
                previous = (moment, count)
            return None

        t_low, t_high = crossing(low), crossing(high)
        if t_low is None or t_high is None or t_high <= t_low:
            return None
        return (high - low) * total / (t_high - t_low)

    # --- pipelines ---

    @staticmethod
    def analytics_toml():
        with open(os.path.join(REPO, "pipelines", "analytics.toml")) as shipped:
            return shipped.read()

    def single_sink_toml(self, sink, channel):
        text = self.analytics_toml()
        match = re.search(rf"^# --- {sink} ---$(.*?)^# --- end {sink} ---$", text, re.S | re.M)
        if not match:
            raise RuntimeError(f"pipelines/analytics.toml has no '# --- {sink} ---' section")
        return f'channels = ["{channel}"]\n{match.group(1)}'

    @staticmethod
    def blackhole_toml(channel):
        # The shipped pipeline's five sinks (same batching and in-flight limits), each
        # discarding its batches: what is left is source, decode, routing and batching.
        shapes = [
            ("mongodb", 1000, 4), ("cassandra", 1000, 4), ("dynamodb", 500, 8),
            ("leaderboard", 2000, 4), ("rate_counter", 2000, 4),
        ]
        lines = [f'channels = ["{channel}"]']
        for name, events, in_flight in shapes:
            lines += [
                f"[sinks.{name}]",
                f"max_in_flight = {in_flight}",
                f'batch = {{ max_events = {events}, max_bytes = "4MiB", linger = "50ms" }}',
                f"[sinks.{name}.blackhole]",
            ]
        return "\n".join(lines) + "\n"

    def store_env(self, names):
        """Environment overrides that point the shipped pipeline at this run's names."""
        prefix = "INGESTD_PIPELINES__ANALYTICS__"
        return {
            prefix + "CHANNELS": f'["{names["channel"]}"]',
            prefix + "PATTERNS": "[]",
            prefix + "SINKS__MONGODB__MONGODB__DATABASE": self.mongo_db,
            prefix + "SINKS__MONGODB__MONGODB__COLLECTION": names["collection"],
            prefix + "SINKS__CASSANDRA__CASSANDRA__KEYSPACE": self.keyspace,
            prefix + "SINKS__CASSANDRA__CASSANDRA__TABLE": names["table"],
            prefix + "SINKS__DYNAMODB__DYNAMODB__TABLE": names["dynamo_table"],
            prefix + "SINKS__DYNAMODB__DYNAMODB__ENDPOINT_URL": names.get("dynamo_endpoint", "http://127.0.0.1:8000"),
        }

    def names(self, scenario, tool, rep, redis_url):
        tag = f"{scenario}_{tool}_{rep}"
        return {
            "tag": tag,
            "channel": f"bench.{tag}",
            "collection": tag,
            "table": tag,
            "dynamo_table": self.dynamo_prefix + tag,
            # Each run has its own private redis-server: the shipped key names are kept.
            "lb_prefix": "leaderboard:purchases:",
            "rate_prefix": "rate:",
            "redis_url": redis_url,
        }

    # --- scenario 1: ingest ceiling ---

    def scenario_ceiling(self):
        settings = self.settings
        server = self.redis("ceiling")
        runs = {"bare": [], "ingestd": []}
        for rep in range(settings.reps):
            order = ["bare", "ingestd"] if rep % 2 == 0 else ["ingestd", "bare"]
            for tool in order:
                log(f"ceiling rep {rep + 1}/{settings.reps}: {tool}")
                runs[tool].append(self.ceiling_once(server, tool, rep))
        bare = lib.summary([run["events_per_s"] for run in runs["bare"]])
        ours = lib.summary([run["events_per_s"] for run in runs["ingestd"]])
        flat = {tool: [run["flat_out"] for run in runs[tool]] for tool in runs}
        result = {
            "description": (
                f"throughput: {settings.ceiling_events:,} events published flat out by one pipelined publisher "
                "to a private redis-server whose pub/sub output-buffer limit is lifted for this phase, so "
                "the backlog is drained at the consumer's own speed; events/s = events / (last one "
                "consumed - first published). ingestd runs the shipped pipeline's five sinks as blackholes "
                "(decode, route, batch, discard); the baseline is a bare redis-rs subscriber that only "
                f"counts. Drops: then {settings.flat_events:,} events from {settings.ceiling_publishers} "
                "publishers flat out with Redis's default limits (pubsub 32mb 8mb 60) and ingestd's "
                "default read_buffer (64 MiB): was the subscriber disconnected for its output buffer, "
                "and is every event it did not deliver counted (ingestd_source_shed_total)? In the drain "
                "phase ingestd's read_buffer is lifted like Redis's limit."
            ),
            "bare_events_per_s": bare,
            "ingestd_events_per_s": ours,
            "ratio": lib.ratio(ours["median"], bare["median"]),
            "publisher_events_per_s": lib.summary([run["publisher_events_per_s"] for tool in runs for run in runs[tool]]),
            "flat_out_publisher_events_per_s": lib.summary(
                [entry["publisher_events_per_s"] for tool in flat for entry in flat[tool]]),
            "ingestd_dropped_by_redis": sum(entry["redis_drops"] for entry in flat["ingestd"]),
            "bare_dropped_by_redis": sum(entry["redis_drops"] for entry in flat["bare"]),
            "ingestd_flat_out_lost_events": sum(entry["lost"] for entry in flat["ingestd"]),
            "bare_flat_out_lost_events": sum(entry["lost"] for entry in flat["bare"]),
            "ingestd_flat_out_shed_events": sum(entry.get("shed", 0) for entry in flat["ingestd"]),
            "ingestd_source_disconnects": sum(entry.get("source_disconnects", 0) for entry in flat["ingestd"]),
            "ingestd_peak_output_buffer_bytes": max(run["peak_omem"] for run in runs["ingestd"]),
            "bare_peak_output_buffer_bytes": max(run["peak_omem"] for run in runs["bare"]),
            "ingestd_cpu_s_per_million": lib.summary([run["cpu_s_per_million"] for run in runs["ingestd"]]),
            "bare_cpu_s_per_million": lib.summary([run["cpu_s_per_million"] for run in runs["bare"]]),
            "ingestd_peak_rss_mib": max(run["peak_rss_mib"] for run in runs["ingestd"]),
            "runs": runs,
        }
        server.stop()
        return result

    def ceiling_consumer(self, server, tool, rep, phase):
        """Starts the bare subscriber or ingestd on `server`; returns (process, channel,
        consumed() -> {name: count})."""
        channel = f"bench.ceiling.{tool}.{rep}.{phase}"
        if tool == "bare":
            consumer = self.track(lib.Process(
                "subscribe",
                [self.benchraw, "subscribe", "--url", server.url, "--channel", channel],
                log_path=os.path.join(self.workdir, "ceiling-bare.log"),
            ))
            consumer.ready.wait(10)

            def consumed():
                return {"all": consumer.count()}
        else:
            # The drain phase lifts Redis's output-buffer limit so the backlog waits for the
            # consumer; ingestd's read buffer is lifted to match (it drains the socket at
            # once, and would otherwise shed past its default 64 MiB). The flat-out phase
            # keeps every default.
            env = {"INGESTD_SOURCE__READ_BUFFER": "4GiB"} if phase == "drain" else {}
            consumer = self.start_ingestd(f"ceiling-{rep}-{phase}", self.blackhole_toml(channel), env, server.url)

            def consumed():
                return self.ingestd_written(consumer, SINKS)
        self.wait_subscribed(server, channel)
        return consumer, channel, consumed

    def ceiling_once(self, server, tool, rep):
        settings = self.settings
        # Phase 1, throughput: no output-buffer limit, so the backlog waits for the consumer.
        control = server.client()
        control.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
        consumer, channel, consumed = self.ceiling_consumer(server, tool, rep, "drain")
        warmup = 20_000
        self.publish(server.url, channel, warmup, f"cw{rep}")
        self.wait_counts(consumed, warmup, stall_seconds=10)
        before = lib.proc_stat(consumer.pid)
        watcher = lib.OmemWatcher(server)
        total = settings.ceiling_events
        results, t0 = self.publish(server.url, channel, total, f"c{rep}", log_name="ceiling-publish")
        t_published = time.time()
        trace, t_done, last = self.wait_counts(consumed, warmup + total, stall_seconds=5)
        after = lib.proc_stat(consumer.pid)
        peak_omem = watcher.stop()
        spilled = self.spilled(consumer) if tool == "ingestd" else 0
        consumer.stop()
        consumed_events = (min(last.values()) if last else 0) - warmup
        sent = sum(result.get("sent", 0) for result in results)
        run = {
            "events_per_s": total / (t_done - t0) if t_done else None,
            "publisher_events_per_s": sent / (t_published - t0),
            "published": sent,
            "consumed": consumed_events,
            "peak_omem": peak_omem,
            "spilled_to_spool": spilled,
            "cpu_s_per_million": (after[0] - before[0]) / max(consumed_events, 1) * 1e6 if after and before else None,
            "peak_rss_mib": (after[2] if after else 0) / 2**20,
        }
        # Phase 2, drops: Redis's default limits, publishers flat out.
        control.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 32mb 8mb 60")
        control.close()
        consumer, channel, consumed = self.ceiling_consumer(server, tool, rep, "flat")
        drops_before = server.drops()
        results, t0 = self.publish(
            server.url, channel, settings.flat_events, f"f{rep}", publishers=settings.ceiling_publishers,
            log_name="ceiling-publish")
        t_published = time.time()
        trace, t_done, last = self.wait_counts(consumed, settings.flat_events, stall_seconds=3)
        disconnects = 0
        shed = 0
        if tool == "ingestd":
            metrics = lib.scrape(consumer.http + "/metrics")
            disconnects = lib.metric(metrics, "ingestd_source_disconnects_total")
            shed = lib.metric(metrics, "ingestd_source_shed_total")
        consumer.stop()
        sent = sum(result.get("sent", 0) for result in results)
        flat_consumed = min(last.values()) if last else 0
        run["flat_out"] = {
            "published": sent,
            "publisher_events_per_s": sent / (t_published - t0),
            "consumed": flat_consumed,
            "lost": sent - flat_consumed,
            "deliveries": sum(result.get("receivers", 0) for result in results),
            "redis_drops": server.drops() - drops_before,
            "source_disconnects": disconnects,
            # Read but shed (ingestd_source_shed_total): counted, not silent.
            "shed": shed,
        }
        return run

    # --- scenario 2: end to end vs Benthos ---

    def scenario_e2e(self):
        settings = self.settings
        tools = ["ingestd"] + (["benthos"] if self.benthos else [])
        runs = {tool: [] for tool in tools}
        for rep in range(settings.reps):
            order = tools if rep % 2 == 0 else list(reversed(tools))
            for tool in order:
                log(f"e2e rep {rep + 1}/{settings.reps}: {tool}")
                runs[tool].append(self.attempt(
                    f"e2e {tool} rep {rep + 1}", self.e2e_once, tool, rep, rate=0, count=settings.e2e_events))
        sustained = {}
        if settings.sustained_seconds:
            for tool in tools:
                capacity = lib.summary([run["events_per_s"] for run in runs[tool]])["median"]
                if not capacity:
                    continue
                attempts = []
                # The same grid of fractions of each tool's own burst throughput, highest first.
                for fraction in SUSTAINED_FRACTIONS:
                    rate = int(capacity * fraction)
                    log(f"e2e sustained: {tool} at {rate}/s ({fraction:.0%}) for {settings.sustained_seconds} s")
                    attempt = self.attempt(
                        f"e2e sustained {tool}", self.e2e_once, tool, f"s{len(attempts)}", rate=rate,
                        count=rate * settings.sustained_seconds)
                    attempt["fraction_of_burst"] = fraction
                    attempts.append(attempt)
                    if attempt["passed"]:
                        break
                passing = [attempt for attempt in attempts if attempt["passed"]]
                sustained[tool] = {
                    "sustained_events_per_s": passing[0]["offered_rate"] if passing else None,
                    "attempts": attempts,
                }
        ours = lib.summary([run["events_per_s"] for run in runs["ingestd"]])
        result = {
            "description": (
                f"the shipped pipelines/analytics.toml (MongoDB, Cassandra, DynamoDB, leaderboard, rate "
                f"counter) against the local services; {settings.e2e_events} events published flat out "
                f"after {settings.e2e_warmup} warm-up events; events/s = events / time from first publish "
                "until the slowest sink has written the last one; every store is then counted with its "
                "driver (nothing lost = every count equals what was published). Sustained: a fixed rate "
                f"for {settings.sustained_seconds} s at 90%, 75%, 60%, 45% of each tool's own median burst "
                f"throughput, highest first; a rate passes when the slowest sink finishes within "
                f"{SUSTAINED_MAX_LAG_S:.0f} s of the publisher and nothing is lost. Peak RSS at the end-to-end "
                "rate is taken from the passing sustained run (the burst runs hold their whole backlog in "
                "memory)."
            ),
            "ingestd_events_per_s": ours,
            "ingestd_lost_events": sum(run["lost_total"] for run in runs["ingestd"]),
            "ingestd_peak_rss_mib_burst": max(run["peak_rss_mib"] for run in runs["ingestd"]),
            "ingestd_peak_rss_mib": sustained_peak_rss(sustained.get("ingestd"))
            or max(run["peak_rss_mib"] for run in runs["ingestd"]),
            "ingestd_cpu_s_per_million": lib.summary([run["cpu_s_per_million"] for run in runs["ingestd"]]),
            "sustained": sustained,
            "runs": runs,
        }
        if self.benthos:
            theirs = lib.summary([run["events_per_s"] for run in runs["benthos"]])
            result.update({
                "benthos_events_per_s": theirs,
                "ratio": lib.ratio(ours["median"], theirs["median"]),
                "benthos_lost_events": sum(run["lost_total"] for run in runs["benthos"]),
                "benthos_peak_rss_mib_burst": max(run["peak_rss_mib"] for run in runs["benthos"]),
                "benthos_peak_rss_mib": sustained_peak_rss(sustained.get("benthos"))
                or max(run["peak_rss_mib"] for run in runs["benthos"]),
                "benthos_cpu_s_per_million": lib.summary([run["cpu_s_per_million"] for run in runs["benthos"]]),
            })
            if "ingestd" in sustained and "benthos" in sustained:
                result["sustained_ratio"] = lib.ratio(
                    sustained["ingestd"]["sustained_events_per_s"], sustained["benthos"]["sustained_events_per_s"])
        else:
            result["benthos"] = self.args.benthos_note or "Benthos binary not available"
            result["ratio"] = None
        return result

    def e2e_once(self, tool, rep, rate, count):
        settings = self.settings
        server = self.redis(f"e2e-{tool}-{rep}")
        names = self.names("e2e", tool[0], rep, server.url)
        if tool == "ingestd":
            process = self.start_ingestd(f"e2e-{rep}", self.analytics_toml(), self.store_env(names), server.url)

            def written():
                return self.ingestd_written(process, SINKS)
        else:
            self.prepare_benthos_stores(names)
            process = self.start_benthos(f"e2e-{rep}", {
                "BENCH_REDIS_URL": server.url,
                "BENCH_CHANNEL": names["channel"],
                "BENCH_MONGO_DB": self.mongo_db,
                "BENCH_MONGO_COLLECTION": names["collection"],
                "BENCH_CASSANDRA_TABLE": f"{self.keyspace}.{names['table']}",
                "BENCH_DYNAMO_TABLE": names["dynamo_table"],
            })

            def written():
                return self.benthos_written(process, SINKS)
        self.wait_subscribed(server, names["channel"])
        sampler = lib.Sampler({"tool": process.pid})
        warmup = settings.e2e_warmup
        t_start = time.time()
        self.publish(server.url, names["channel"], warmup, f"{names['tag']}w")
        self.wait_counts(written, warmup, stall_seconds=60, interval=0.1)
        drops_before = server.drops()
        before = lib.proc_stat(process.pid)
        results, t0 = self.publish(server.url, names["channel"], count, f"{names['tag']}m", rate=rate)
        t_published = time.time()
        trace, t_done, last = self.wait_counts(written, warmup + count, stall_seconds=60, interval=0.1)
        done_at = {sink: round(at - t0, 2) for sink, at in self.last_done_at.items()}
        after = lib.proc_stat(process.pid)
        samples = sampler.stop()
        spilled = self.spilled(process) if tool == "ingestd" else None
        process.stop(timeout=60)
        expected = warmup + count
        # A failed count (a store restarted under us) fails the repetition, which is retried.
        stores = self.count_stores(names, self.days_around(t_start, time.time()))
        lost = {sink: expected - stores.get(sink, 0) for sink in SINKS}
        end = t_done or trace[-1][0]
        run = {
            "events": count,
            "offered_rate": rate or None,
            "events_per_s": count / (end - t0) if t_done else None,
            "completed": t_done is not None,
            "lag_after_publisher_s": (t_done - t_published) if t_done else None,
            "written_metric": last,
            "sink_done_after_s": done_at,
            "spilled_to_spool": spilled,
            "store_counts": stores,
            "expected_per_store": expected,
            "lost": lost,
            "lost_total": sum(max(value, 0) for value in lost.values()),
            "deliveries": sum(result.get("receivers", 0) for result in results),
            "redis_drops": server.drops() - drops_before,
            "cpu_s_per_million": (after[0] - before[0]) / count * 1e6 if after and before else None,
            "peak_rss_mib": max((sample[3] for sample in samples["tool"]), default=0) / 2**20,
            "rss_trace": [(round(sample[0] - t0, 2), round(sample[2] / 2**20, 1)) for sample in samples["tool"]][::4],
        }
        if rate:
            run["passed"] = bool(t_done and run["lag_after_publisher_s"] <= SUSTAINED_MAX_LAG_S and run["lost_total"] == 0)
        server.stop()
        return run

    def prepare_benthos_stores(self, names):
        """Benthos cannot create tables: the same schema ingestd creates, made with the raw
        client (a zero-event write creates the Cassandra table and the DynamoDB table)."""
        for sink, extra in (
            ("cassandra", ["--keyspace", self.keyspace, "--table", names["table"]]),
            ("dynamodb", ["--dynamo-table", names["dynamo_table"]]),
            ("mongodb", ["--mongo-db", self.mongo_db, "--mongo-collection", names["collection"]]),
        ):
            lib.run_json(
                [self.benchraw, "write", "--sink", sink, "--count", "0", "--id-prefix", "none",
                 "--batch", "1", "--concurrency", "1"] + extra,
                env=AWS_ENV, timeout=120, log_path=os.path.join(self.workdir, "prepare.log"))

    # --- scenario 3: per sink vs raw client ---

    def scenario_sinks(self):
        settings = self.settings
        result = {
            "description": (
                "each sink alone in a pipeline (its section of pipelines/analytics.toml; only the queue "
                "capacity is raised to hold the whole run, so the sink is fed from memory) vs "
                "benchraw writing the same rows with the same crate, batch size and concurrency (rows built "
                "before its clock starts). N events are published flat out to a private redis-server "
                "(output-buffer limit lifted, so the backlog waits upstream instead of being dropped). "
                "ingestd's rate is the queue-drain rate after the publisher has finished (the sink-limited "
                "regime: a full queue feeds the sink, nothing else runs) when at least 30% of the events "
                "are still to be written then; otherwise the sink outpaces ingestion and the rate is N / "
                "(last written - first published), i.e. bounded by the source. Raw rate = N / its "
                "elapsed time."
            ),
        }
        for sink in SINKS:
            count = settings.sink_events[sink]
            runs = {"raw": [], "ingestd": []}
            for rep in range(settings.reps):
                order = ["raw", "ingestd"] if rep % 2 == 0 else ["ingestd", "raw"]
                for tool in order:
                    log(f"sink {sink} rep {rep + 1}/{settings.reps}: {tool} ({count:,} events)")
                    once = self.raw_once if tool == "raw" else self.sink_once

                    def measure(once=once, tool=tool, rep=rep, count=count, sink=sink):
                        server = self.redis(f"sink-{sink}-{tool}-{rep}")
                        try:
                            return once(server, sink, rep, count)
                        finally:
                            server.stop()

                    runs[tool].append(self.attempt(f"sink {sink} {tool} rep {rep + 1}", measure))
            raw = lib.summary([run["events_per_s"] for run in runs["raw"]])
            ours = lib.summary([run["events_per_s"] for run in runs["ingestd"]])
            regimes = sorted({run["regime"] for run in runs["ingestd"]})
            result[sink] = {
                "events": count,
                "raw_events_per_s": raw,
                "ingestd_events_per_s": ours,
                "ratio": lib.ratio(ours["median"], raw["median"]),
                "ingestd_regime": "/".join(regimes),
                "raw_shape": RAW_SHAPE[sink],
                "runs": runs,
            }
        return result

    def raw_once(self, server, sink, rep, count):
        names = self.names(f"sink_{sink}", "r", rep, server.url)
        shape = RAW_SHAPE[sink]
        key_prefix = names["lb_prefix"] if sink == "leaderboard" else names["rate_prefix"]
        argv = [
            self.benchraw, "write", "--sink", sink.replace("_", "-"), "--count", str(count),
            "--id-prefix", names["tag"], "--batch", str(shape["batch"]),
            "--concurrency", str(shape["concurrency"]),
            "--mongo-db", self.mongo_db, "--mongo-collection", names["collection"],
            "--keyspace", self.keyspace, "--table", names["table"],
            "--dynamo-table", names["dynamo_table"],
            "--redis-url", server.url, "--key-prefix", key_prefix,
            "--sink-id", f"analytics.{sink}",
        ]
        process = self.track(lib.Process("raw", argv, env=AWS_ENV, log_path=os.path.join(self.workdir, f"raw-{sink}.log")))
        code = process.wait(timeout=900)
        if code != 0 or not process.result:
            raise RuntimeError(f"raw {sink} failed: {process.lines[-5:]}")
        return {
            "events_per_s": process.result["rate"],
            "seconds": process.result["seconds"],
            "written": process.result["written"],
        }

    def sink_once(self, server, sink, rep, count):
        names = self.names(f"sink_{sink}", "i", rep, server.url)
        env = self.store_env(names)
        # Only this sink exists in the single-sink file: drop the other sinks' overrides.
        env = {key: value for key, value in env.items()
               if "__SINKS__" not in key or f"__SINKS__{sink.upper()}__" in key}
        # A queue that holds the whole run: the sink is fed from memory, not from the spool.
        env[f"INGESTD_PIPELINES__ANALYTICS__SINKS__{sink.upper()}__QUEUE__CAPACITY"] = str(count + 10_000)
        env[f"INGESTD_PIPELINES__ANALYTICS__SINKS__{sink.upper()}__QUEUE__MAX_BYTES"] = "8GiB"
        control = server.client()
        control.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
        control.close()
        process = self.start_ingestd(f"sink-{sink}-{rep}", self.single_sink_toml(sink, names["channel"]), env, server.url)
        self.wait_subscribed(server, names["channel"])
        before = lib.proc_stat(process.pid)
        results, t0 = self.publish(server.url, names["channel"], count, names["tag"])
        t_published = time.time()
        written_then = self.ingestd_written(process, [sink])[sink]
        trace, t_done, last = self.wait_counts(
            lambda: self.ingestd_written(process, [sink]), count, stall_seconds=30, interval=0.02)
        after = lib.proc_stat(process.pid)
        process.stop(timeout=60)
        if not t_done:
            raise RuntimeError(f"ingestd {sink}: wrote {last.get(sink)} of {count}")
        backlog = count - written_then
        if backlog >= 0.3 * count:
            regime, rate = "sink-limited", backlog / (t_done - t_published)
        else:
            regime, rate = "source-limited", count / (t_done - t0)
        return {
            "events_per_s": rate,
            "regime": regime,
            "whole_run_events_per_s": count / (t_done - t0),
            "backlog_when_published": backlog,
            "publish_seconds": t_published - t0,
            "cpu_s_per_million": (after[0] - before[0]) / count * 1e6 if after and before else None,
        }

    # --- scenario 4: latency ---

    def scenario_latency(self):
        settings = self.settings
        server = self.redis("latency")
        names = self.names("latency", "i", 0, server.url)
        process = self.start_ingestd("latency", self.analytics_toml(), self.store_env(names), server.url)
        self.wait_subscribed(server, names["channel"])
        rate = settings.latency_rate
        total = rate * (settings.latency_warmup + settings.latency_seconds)
        log(f"latency: {rate}/s for {settings.latency_warmup}+{settings.latency_seconds} s")
        publisher = self.track(lib.Process(
            "publish",
            [self.benchraw, "publish", "--url", server.url, "--channel", names["channel"],
             "--count", str(total), "--rate", str(rate), "--id-prefix", names["tag"]],
            log_path=os.path.join(self.workdir, "latency-publish.log"),
        ))
        time.sleep(settings.latency_warmup)
        metrics_before = lib.scrape(process.http + "/metrics")
        before = lib.proc_stat(process.pid)
        publisher.wait(timeout=600)
        self.wait_counts(lambda: self.ingestd_written(process, SINKS), total, stall_seconds=30, interval=0.1)
        metrics_after = lib.scrape(process.http + "/metrics")
        after = lib.proc_stat(process.pid)
        process.stop(timeout=60)
        measured = metrics_after and lib.metric(metrics_after, "ingestd_sink_events_written_total", sink="mongodb") - \
            lib.metric(metrics_before, "ingestd_sink_events_written_total", sink="mongodb")
        result = {
            "description": (
                f"the shipped pipeline at a fixed {rate} events/s for {settings.latency_seconds} s (after "
                f"{settings.latency_warmup} s of warm-up); latency = sink acknowledgement time minus the event's "
                "timestamp (set by the publisher when it sends), from the ingestd_end_to_end_latency_seconds "
                "histogram (difference of two scrapes), interpolated inside its buckets (1, 2.5, 5, 10, 25, "
                "50, 100, 250 ms ...): each figure comes with the bucket bound it falls under."
            ),
            "rate": rate,
            "seconds": settings.latency_seconds,
            "cpu_s_per_million_at_rate": (after[0] - before[0]) / max(measured, 1) * 1e6 if after and before else None,
            "rss_mib_at_rate": (after[1] if after else 0) / 2**20,
            "sinks": {},
        }
        for sink in SINKS:
            buckets = lib.histogram_delta(
                lib.histogram(metrics_after, "ingestd_end_to_end_latency_seconds", sink=sink),
                lib.histogram(metrics_before, "ingestd_end_to_end_latency_seconds", sink=sink),
            )
            entry = {"events": buckets[-1][1] if buckets else 0}
            for label, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
                value, bound = lib.quantile(buckets, q)
                entry[label + "_ms"] = None if value is None else value * 1000
                entry[label + "_bucket_le_ms"] = None if bound is None else bound * 1000
            entry["buckets"] = [(bound, count) for bound, count in buckets]
            result["sinks"][sink] = entry
        server.stop()
        return result

    # --- scenario 6: memory with /metrics never scraped ---

    def scenario_unscraped(self):
        """The Prometheus exporter buffers every histogram sample until it is rendered or
        its upkeep runs: RSS at a steady rate with /metrics never scraped vs scraped every
        second (as a Prometheus server would)."""
        settings = self.settings
        rate, seconds = 20_000, (10 if settings.quick else 20)
        result = {
            "description": (
                f"ingestd with five blackhole sinks at a fixed {rate:,} events/s for {seconds} s, once with "
                "/metrics never scraped and once scraped every second; RSS growth per minute of each"
            ),
            "rate": rate,
            "seconds": seconds,
        }
        for scraped in (False, True):
            server = self.redis(f"unscraped-{scraped}")
            channel = f"bench.unscraped.{int(scraped)}"
            process = self.start_ingestd(f"unscraped-{int(scraped)}", self.blackhole_toml(channel), {}, server.url)
            self.wait_subscribed(server, channel)
            publisher = self.track(lib.Process(
                "publish",
                [self.benchraw, "publish", "--url", server.url, "--channel", channel, "--count",
                 str(rate * seconds), "--rate", str(rate), "--id-prefix", f"u{int(scraped)}"],
                log_path=os.path.join(self.workdir, "unscraped-publish.log")))
            samples = []
            started = time.time()
            while publisher.alive():
                if scraped:
                    try:
                        lib.scrape(process.http + "/metrics")
                    except OSError:
                        pass
                stat = lib.proc_stat(process.pid)
                if stat:
                    samples.append((time.time() - started, stat[1]))
                time.sleep(1)
            process.stop()
            server.stop()
            # Slope of RSS over the second half (the first half includes warm-up allocations).
            tail = [sample for sample in samples if sample[0] >= seconds / 2]
            slope = ((tail[-1][1] - tail[0][1]) / (tail[-1][0] - tail[0][0]) * 60 / 2**20
                     if len(tail) > 1 and tail[-1][0] > tail[0][0] else None)
            key = "scraped" if scraped else "never_scraped"
            result[key] = {
                "rss_growth_mib_per_min": slope,
                "rss_end_mib": samples[-1][1] / 2**20 if samples else None,
                "rss_trace": [(round(at, 1), round(value / 2**20, 1)) for at, value in samples],
            }
        return result

    # --- diagnostics: where ingestd's per-event CPU and memory go ---

    def scenario_diagnostics(self):
        """Figures behind the bottleneck analysis, kept so a fix shows up as a before/after:
        decoder cost vs a single-pass prototype, resident bytes per queued event, and the
        cost of fan-out (one vs five blackhole sinks draining the same backlog)."""
        settings = self.settings
        micro = lib.run_json([self.benchraw, "microbench-decode", "--count", "300000"], timeout=300,
                             log_path=os.path.join(self.workdir, "microbench.log"))
        result = {
            "description": (
                "decode: ns per event of ingestd::event::decode vs a single-pass serde visitor (benchraw "
                "microbench-decode); memory: resident bytes per decoded event held in memory; fan-out: "
                "the ingest-ceiling drain with 1 and with 5 blackhole sinks (events/s, CPU us per event, "
                "context switches per 1000 events, all threads)"
            ),
            "decode": micro,
            "fan_out": {},
        }
        count = 150_000 if settings.quick else 400_000
        for sinks in (1, 5):
            server = self.redis(f"diag-{sinks}")
            control = server.client()
            control.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
            control.close()
            channel = f"bench.diag.{sinks}"
            lines = [f'channels = ["{channel}"]']
            for index in range(sinks):
                lines += [f"[sinks.s{index}]", 'batch = { max_events = 1000, max_bytes = "4MiB", linger = "50ms" }',
                          f"[sinks.s{index}.blackhole]"]
            names = [f"s{index}" for index in range(sinks)]
            process = self.start_ingestd(f"diag-{sinks}", "\n".join(lines) + "\n", {}, server.url)
            self.wait_subscribed(server, channel)
            self.publish(server.url, channel, 20_000, "dw")
            self.wait_counts(lambda: self.ingestd_written(process, names), 20_000, stall_seconds=10)
            switches_before = context_switches(process.pid)
            before = lib.proc_stat(process.pid)
            _, t0 = self.publish(server.url, channel, count, "dm")
            _, t_done, _ = self.wait_counts(lambda: self.ingestd_written(process, names), 20_000 + count, stall_seconds=10)
            after = lib.proc_stat(process.pid)
            switches_after = context_switches(process.pid)
            process.stop()
            server.stop()
            result["fan_out"][f"{sinks}_sinks"] = {
                "events_per_s": count / (t_done - t0) if t_done else None,
                "cpu_us_per_event": (after[0] - before[0]) / count * 1e6 if after and before else None,
                "context_switches_per_1000_events": (switches_after - switches_before) / count * 1000,
            }
        return result

    # --- scenario 5: resources during an outage ---

    def scenario_outage(self):
        settings = self.settings
        server = self.redis("outage")
        proxy = self.track(lib.Proxy("127.0.0.1", 8000))
        names = self.names("outage", "i", 0, server.url)
        names["dynamo_endpoint"] = f"http://127.0.0.1:{proxy.port}"
        env = self.store_env(names)
        # The memory bound under test, set as a user would: the down sink's queue.max_bytes.
        env["INGESTD_PIPELINES__ANALYTICS__SINKS__DYNAMODB__QUEUE__MAX_BYTES"] = f"{OUTAGE_QUEUE_MAX_MIB}MiB"
        process = self.start_ingestd("outage", self.analytics_toml(), env, server.url)
        self.wait_subscribed(server, names["channel"])
        rate = settings.outage_rate
        before_s, outage_s, after_s = 5, settings.outage_seconds, 10
        total = rate * (before_s + outage_s + after_s)
        log(f"outage: {rate}/s; dynamodb endpoint dark for {outage_s} s")
        sampler = lib.Sampler({"ingestd": process.pid}, interval=0.25)
        watcher = lib.OmemWatcher(server)
        drops_before = server.drops()
        t_start = time.time()
        publisher = self.track(lib.Process(
            "publish",
            [self.benchraw, "publish", "--url", server.url, "--channel", names["channel"],
             "--count", str(total), "--rate", str(rate), "--id-prefix", names["tag"]],
            log_path=os.path.join(self.workdir, "outage-publish.log"),
        ))
        depth_trace = []
        sampling = threading.Event()

        def sample_depth():
            # Scrapes /metrics every 500 ms, as a Prometheus server would (a scrape also
            # drains the exporter's histogram buffers).
            while not sampling.is_set():
                try:
                    metrics = lib.scrape(process.http + "/metrics")
                    depth_trace.append((
                        round(time.time() - t_start, 2),
                        lib.metric(metrics, "ingestd_sink_queue_depth", sink="dynamodb"),
                        lib.metric(metrics, "ingestd_sink_queue_depth", sink="mongodb"),
                        lib.metric(metrics, "ingestd_source_events_received_total"),
                        lib.metric(metrics, "ingestd_spool_bytes", sink="dynamodb"),
                    ))
                except OSError:
                    pass
                sampling.wait(0.5)

        depth_thread = threading.Thread(target=sample_depth, daemon=True)
        depth_thread.start()
        time.sleep(before_s)
        t_down = time.time()
        proxy.down()
        time.sleep(outage_s)
        proxy.up()
        t_up = time.time()
        publisher.wait(timeout=600)
        t_published = time.time()
        trace, t_done, last = self.wait_counts(
            lambda: self.ingestd_written(process, SINKS), total, stall_seconds=60, interval=0.25)
        time.sleep(1)
        sampling.set()
        depth_thread.join()
        metrics = lib.scrape(process.http + "/metrics")
        samples = sampler.stop()
        peak_omem = watcher.stop()
        payload_bytes = lib.metric(metrics, "ingestd_source_bytes_received_total") / max(
            lib.metric(metrics, "ingestd_source_events_received_total"), 1)
        capacity = 20_000  # the default queue capacity (analytics.toml does not set one)
        # With when_full = "spool" (the default) the overflow goes to disk, not memory.
        in_flight_events = 8 * 500  # dynamodb: max_in_flight x batch.max_events held in retries
        rss = [(sample[0] - t_start, sample[2]) for sample in samples["ingestd"]]
        before_rss = [value for at, value in rss if at < t_down - t_start]
        during = [value for at, value in rss if t_down - t_start <= at <= (t_done or time.time()) - t_start]
        down = [value for at, value in rss if t_down - t_start <= at <= t_up - t_start]
        baseline = max(before_rss) if before_rss else 0
        peak = max(during) if during else 0
        peak_down = max(down) if down else 0
        max_depth = max((entry[1] for entry in depth_trace), default=0)
        process.stop(timeout=60)
        stores = self.count_stores(names, self.days_around(t_start, time.time()))
        # What one queued event costs in memory, measured with the same decoder.
        micro = lib.run_json([self.benchraw, "microbench-decode", "--count", "100000"], timeout=300,
                             log_path=os.path.join(self.workdir, "microbench.log"))
        resident_bytes = micro["resident_bytes_per_decoded_event"]
        held_events = capacity + in_flight_events
        # queue.max_bytes counts events at 512 B + 3 x payload (Event::resident_bytes);
        # what the retries of in-flight batches hold comes on top.
        configured_bound = (OUTAGE_QUEUE_MAX_MIB * 2**20
                            + in_flight_events * (512 + 3 * payload_bytes))
        payload_bound = capacity * payload_bytes
        resident_bound = held_events * resident_bytes
        growth = peak - baseline
        growth_down = peak_down - baseline
        result = {
            "description": (
                f"the shipped pipeline at {rate} events/s; after {before_s} s the DynamoDB endpoint (a TCP "
                f"proxy in front of DynamoDB Local) refuses and resets every connection for {outage_s} s, "
                f"then comes back; publishing goes on {after_s} s more. RSS sampled every 250 ms; the "
                "memory bound is queue capacity x mean event size (payload bytes). The down sink's "
                f"queue.max_bytes is set to {OUTAGE_QUEUE_MAX_MIB} MiB; the configured bound adds what "
                "its in-flight batches hold in retries (max_in_flight x batch.max_events events)."
            ),
            "rate": rate,
            "outage_seconds": outage_s,
            "published": total,
            "written_metric": last,
            "store_counts": stores,
            "lost": {sink: total - stores.get(sink, 0) for sink in SINKS},
            "redis_drops": server.drops() - drops_before,
            "source_disconnects": lib.metric(metrics, "ingestd_source_disconnects_total"),
            "peak_output_buffer_bytes": peak_omem,
            "recovered_seconds_after_up": (t_done - t_up) if t_done else None,
            "queue_capacity": capacity,
            "max_dynamodb_queue_depth": max_depth,
            "mean_event_bytes": payload_bytes,
            "rss_before_mib": baseline / 2**20,
            "rss_peak_while_down_mib": peak_down / 2**20,
            "rss_growth_while_down_mib": growth_down / 2**20,
            "rss_peak_mib": peak / 2**20,
            "rss_growth_mib": growth / 2**20,
            "memory_bound_mib": payload_bound / 2**20,
            "within_bound": growth_down <= payload_bound,
            "resident_bytes_per_event": resident_bytes,
            "held_events_bound": held_events,
            "memory_bound_resident_mib": resident_bound / 2**20,
            "within_resident_bound": growth_down <= resident_bound,
            "queue_max_bytes_mib": OUTAGE_QUEUE_MAX_MIB,
            "memory_bound_configured_mib": configured_bound / 2**20,
            "within_configured_bound": growth_down <= configured_bound,
            "bytes_per_held_event": growth_down / max(max_depth + in_flight_events, 1),
            "rss_trace": [(round(at, 2), round(value / 2**20, 1)) for at, value in rss],
            "queue_trace": depth_trace,
            "queue_trace_columns": ["s", "dynamodb queue depth", "mongodb queue depth", "source events received",
                                    "dynamodb spool bytes"],
            "spilled_to_spool": lib.metric(metrics, "ingestd_spool_records_total", op="written"),
            "spool_dropped": lib.metric(metrics, "ingestd_spool_dropped_events_total"),
            "max_spool_mib": max((entry[4] for entry in depth_trace), default=0) / 2**20,
            "outage_window": [round(t_down - t_start, 2), round(t_up - t_start, 2)],
            "published_until": round(t_published - t_start, 2),
        }
        proxy.stop()
        server.stop()
        return result

    # --- the run ---

    def cleanup(self):
        try:
            lib.run_json(
                [self.benchraw, "cleanup", "--mongo-db", self.mongo_db, "--keyspace", self.keyspace,
                 "--dynamo-prefix", self.dynamo_prefix],
                env=AWS_ENV, timeout=300, log_path=os.path.join(self.workdir, "cleanup.log"))
        except Exception as error:  # noqa: BLE001 - report, never hide the results
            log(f"cleanup failed: {error}")

    def run(self):
        started = time.time()
        meta = {
            "run_id": self.run_id,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "mode": "quick" if self.settings.quick else "full",
            "repetitions": self.settings.reps,
            "git_commit": git_commit(),
            "host": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "loadavg_start": open("/proc/loadavg").read().split()[:3],
                "mem_total_mib": mem_total_mib(),
            },
            "versions": versions(self.ingestd, self.benthos),
            "note": (
                "2 shared cores: other builds and tests ran at the same time. Compare ratios from this "
                "run, not absolute numbers across runs."
            ),
        }
        self.results["meta"] = meta
        scenarios = [
            ("ingest_ceiling", self.scenario_ceiling),
            ("end_to_end", self.scenario_e2e),
            ("per_sink", self.scenario_sinks),
            ("latency", self.scenario_latency),
            ("outage", self.scenario_outage),
            ("unscraped", self.scenario_unscraped),
            ("diagnostics", self.scenario_diagnostics),
        ]
        wanted = set(self.args.only.split(",")) if self.args.only else None
        stores = {"end_to_end", "per_sink", "latency", "outage"}
        try:
            for key, scenario in scenarios:
                if wanted and key not in wanted:
                    continue
                scenario_started = time.time()
                try:
                    if key in stores:
                        self.wait_services()
                    if key in ("latency", "outage"):
                        self.results[key] = self.attempt(key, scenario)
                    else:
                        self.results[key] = scenario()
                except Exception as error:  # noqa: BLE001 - one failed scenario must not lose the others
                    log(f"{key} failed: {error}")
                    traceback.print_exc()
                    self.results[key] = {"error": f"{type(error).__name__}: {error}"}
                self.results[key]["seconds"] = round(time.time() - scenario_started, 1)
                self.results[key]["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
        finally:
            self.stop_all()
            self.cleanup()
        meta["seconds"] = round(time.time() - started, 1)
        meta["host"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        self.results["targets"] = evaluate_targets(self.results)
        return self.results


def evaluate_targets(results):
    """Every target with its figure and verdict (None when the figure is missing)."""
    targets = []

    def add(name, figure, goal, met):
        targets.append({"target": name, "figure": figure, "goal": goal, "met": met})

    ceiling = results.get("ingest_ceiling", {})
    figure = ceiling.get("ratio")
    add("ingest ceiling vs bare subscriber", figure, ">= 0.9x",
        None if figure is None else figure >= TARGETS["ingest_ceiling_ratio"])
    if "ingestd_dropped_by_redis" in ceiling:
        drops = ceiling["ingestd_dropped_by_redis"]
        add("never dropped by Redis while the publishers run flat out", drops, "0 drops", drops == 0)
        uncounted = ceiling.get("ingestd_flat_out_lost_events", 0) - ceiling.get("ingestd_flat_out_shed_events", 0)
        add("flat out: events not delivered that no counter shows (lost - shed)", uncounted, "0", uncounted == 0)
    e2e = results.get("end_to_end", {})
    if e2e.get("sustained_ratio") is not None:
        figure = e2e["sustained_ratio"]
        add("end to end vs Benthos (sustained, nothing lost)", figure, ">= 2x", figure >= TARGETS["end_to_end_vs_benthos"])
    figure = e2e.get("ratio")
    add("end to end vs Benthos (burst throughput)", figure, ">= 2x",
        None if figure is None else figure >= TARGETS["end_to_end_vs_benthos"])
    if "ingestd_lost_events" in e2e:
        add("end to end: nothing lost (store counts)", e2e["ingestd_lost_events"], "0", e2e["ingestd_lost_events"] == 0)
    for sink in SINKS:
        figure = results.get("per_sink", {}).get(sink, {}).get("ratio")
        add(f"{sink} sink vs raw client", figure, ">= 0.8x", None if figure is None else figure >= TARGETS["per_sink_ratio"])
    figure = e2e.get("ingestd_peak_rss_mib")
    measured_at = "sustained" if sustained_peak_rss((e2e.get("sustained") or {}).get("ingestd")) else "burst"
    add(f"peak RSS at the end-to-end rate ({measured_at} run, MiB)", figure, "< 100", None if figure is None else figure < TARGETS["peak_rss_mib"])
    outage = results.get("outage", {})
    if "within_bound" in outage:
        add("RSS growth while a sink is down <= queue capacity x payload size",
            outage.get("rss_growth_while_down_mib"), f"<= {outage.get('memory_bound_mib', 0):.1f} MiB",
            outage["within_bound"])
        add("RSS growth while a sink is down <= held events x resident event size",
            outage.get("rss_growth_while_down_mib"), f"<= {outage.get('memory_bound_resident_mib', 0):.1f} MiB",
            outage["within_resident_bound"])
        if "within_configured_bound" in outage:
            add("RSS growth while a sink is down <= its queue.max_bytes + batches held in retries",
                outage.get("rss_growth_while_down_mib"),
                f"<= {outage.get('memory_bound_configured_mib', 0):.1f} MiB",
                outage["within_configured_bound"])
        lost = outage.get("lost") or {}
        total_lost = sum(max(value, 0) for value in lost.values()) if lost else None
        add("outage: nothing lost", total_lost, "0", None if total_lost is None else total_lost == 0)
    unscraped = results.get("unscraped", {}).get("never_scraped", {})
    if unscraped.get("rss_growth_mib_per_min") is not None:
        figure = unscraped["rss_growth_mib_per_min"]
        add("steady RSS with /metrics never scraped (MiB/min)", figure, "< 1", figure < 1)
    return targets


def wait_ready(process, path, what, log_path, timeout=120):
    """Waits until `process` answers 200 on `path`; fails if it exits or takes too long."""
    deadline = time.time() + timeout
    while not lib.http_ok(process.http + path):
        if not process.alive():
            raise RuntimeError(f"{what} exited: see {log_path}")
        if time.time() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout} s")
        time.sleep(0.1)


def prune_runs(work, keep):
    """Keeps the work directories (logs, private redis dirs) of the last `keep` runs."""
    try:
        runs = sorted(entry for entry in os.listdir(work) if entry.startswith("b"))
    except FileNotFoundError:
        return
    for old in runs[:-keep]:
        shutil.rmtree(os.path.join(work, old), ignore_errors=True)


def sustained_peak_rss(sustained):
    """Peak RSS of the passing sustained run (the tool at its end-to-end rate), if any."""
    if not sustained:
        return None
    for attempt in sustained.get("attempts", []):
        if attempt.get("passed"):
            return attempt["peak_rss_mib"]
    return None


def context_switches(pid):
    """Voluntary + involuntary context switches of every thread of `pid`."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/status") as status:
                for line in status:
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def git_commit():
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def mem_total_mib():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return None


def versions(ingestd, benthos):
    found = {}
    for name, argv in (("ingestd", [ingestd, "--version"]), ("benthos", [benthos, "--version"] if benthos else None),
                       ("redis-server", ["redis-server", "--version"])):
        if not argv:
            found[name] = None
            continue
        try:
            found[name] = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            found[name] = None
    return found


# --- report ---


def fmt(value, digits=0, suffix=""):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def fmt_summary(entry, digits=0):
    if not entry or entry.get("median") is None:
        return "n/a"
    spread = entry.get("spread")
    return f"{entry['median']:,.{digits}f} (±{spread * 50:.0f}%)" if spread is not None and entry["n"] > 1 else f"{entry['median']:,.{digits}f}"


def verdict(met):
    return {True: "met", False: "**not met**", None: "n/a"}[met]


def render_markdown(results):
    meta = results.get("meta", {})
    lines = [
        f"Run `{meta.get('run_id')}` ({meta.get('mode')}, {meta.get('repetitions')} repetitions, "
        f"{meta.get('date_utc')}, commit {meta.get('git_commit')}, {meta.get('host', {}).get('cpus')} CPUs, "
        f"load {' '.join(meta.get('host', {}).get('loadavg_start', []))} at start). Medians, ± half the "
        "min-max spread; ratios are ingestd / baseline from the same run.",
        "",
        "| target | figure | goal | verdict |",
        "|---|---|---|---|",
    ]
    for target in results.get("targets", []):
        figure = target["figure"]
        shown = fmt(figure, 2) if isinstance(figure, float) else fmt(figure)
        lines.append(f"| {target['target']} | {shown} | {target['goal']} | {verdict(target['met'])} |")
    lines += ["", "| scenario | ingestd | baseline | ratio |", "|---|---|---|---|"]
    ceiling = results.get("ingest_ceiling", {})
    if "ratio" in ceiling:
        lines.append(
            f"| ingest ceiling, events/s (5 blackhole sinks vs bare subscriber) | {fmt_summary(ceiling['ingestd_events_per_s'])} "
            f"| {fmt_summary(ceiling['bare_events_per_s'])} | {fmt(ceiling['ratio'], 2)}x |")
    e2e = results.get("end_to_end", {})
    if "ingestd_events_per_s" in e2e:
        baseline = fmt_summary(e2e.get("benthos_events_per_s")) if e2e.get("benthos_events_per_s") else e2e.get("benthos", "n/a")
        lines.append(
            f"| end to end, events/s (5 stores vs Benthos v4.27.0) | {fmt_summary(e2e['ingestd_events_per_s'])} | {baseline} "
            f"| {fmt(e2e.get('ratio'), 2)}x |")
    sustained = e2e.get("sustained") or {}
    if sustained:
        ours_rate = (sustained.get("ingestd") or {}).get("sustained_events_per_s")
        theirs_rate = (sustained.get("benthos") or {}).get("sustained_events_per_s")
        lines.append(
            f"| end to end, sustained events/s with nothing lost | {fmt(ours_rate)} | {fmt(theirs_rate)} "
            f"| {fmt(e2e.get('sustained_ratio'), 2)}x |")
    for sink in SINKS:
        entry = results.get("per_sink", {}).get(sink)
        if entry and "ratio" in entry:
            lines.append(
                f"| {sink} sink, events/s (vs raw {sink} client) | {fmt_summary(entry['ingestd_events_per_s'])} "
                f"| {fmt_summary(entry['raw_events_per_s'])} | {fmt(entry['ratio'], 2)}x |")
    latency = results.get("latency", {})
    if "sinks" in latency:
        lines += ["", f"Latency, publish to written, at {latency['rate']} events/s (ms; bucket bound in brackets):", "",
                  "| sink | p50 | p99 | p999 |", "|---|---|---|---|"]
        for sink, entry in latency["sinks"].items():
            cells = [f"{fmt(entry[q + '_ms'], 1)} [≤{fmt(entry[q + '_bucket_le_ms'], 0)}]" for q in ("p50", "p99", "p999")]
            lines.append(f"| {sink} | " + " | ".join(cells) + " |")
    lines += ["", "| resources | ingestd | baseline |", "|---|---|---|"]
    if "ingestd_cpu_s_per_million" in ceiling:
        lines.append(f"| CPU s per million events, ingest ceiling | {fmt_summary(ceiling['ingestd_cpu_s_per_million'], 1)} "
                     f"| {fmt_summary(ceiling['bare_cpu_s_per_million'], 1)} (bare subscriber) |")
    if "ingestd_cpu_s_per_million" in e2e:
        lines.append(f"| CPU s per million events, end to end | {fmt_summary(e2e['ingestd_cpu_s_per_million'], 1)} "
                     f"| {fmt_summary(e2e.get('benthos_cpu_s_per_million'), 1)} (Benthos) |")
        if e2e.get("sustained"):
            lines.append(f"| peak RSS at the sustained end-to-end rate (MiB) | {fmt(e2e.get('ingestd_peak_rss_mib'), 1)} "
                         f"| {fmt(e2e.get('benthos_peak_rss_mib'), 1)} (Benthos) |")
        lines.append(f"| peak RSS, end-to-end burst (MiB) | {fmt(e2e.get('ingestd_peak_rss_mib_burst'), 1)} "
                     f"| {fmt(e2e.get('benthos_peak_rss_mib_burst'), 1)} (Benthos) |")
    if "ingestd_peak_rss_mib" in ceiling:
        lines.append(f"| peak RSS, ingest ceiling (MiB) | {fmt(ceiling['ingestd_peak_rss_mib'], 1)} | |")
    outage = results.get("outage", {})
    if "rss_peak_mib" in outage:
        lines.append(
            f"| RSS during a {outage['outage_seconds']} s DynamoDB outage at {outage['rate']} ev/s (MiB) | "
            f"{fmt(outage['rss_before_mib'], 1)} before, {fmt(outage['rss_peak_while_down_mib'], 1)} while down "
            f"(+{fmt(outage['rss_growth_while_down_mib'], 1)}), {fmt(outage['rss_peak_mib'], 1)} peak after recovery; "
            f"bounds {fmt(outage['memory_bound_mib'], 1)} = {outage['queue_capacity']:,} x "
            f"{fmt(outage['mean_event_bytes'], 0)} B payload, {fmt(outage['memory_bound_resident_mib'], 1)} = "
            f"{outage['held_events_bound']:,} x {fmt(outage['resident_bytes_per_event'], 0)} B resident, "
            f"{fmt(outage.get('memory_bound_configured_mib'), 1)} = queue.max_bytes "
            f"{outage.get('queue_max_bytes_mib')} MiB + batches in retries | |")
        lines.append(
            f"| outage: events spilled to the spool / largest spool (MiB) | {fmt(outage.get('spilled_to_spool'))} / "
            f"{fmt(outage.get('max_spool_mib'), 1)} | |")
        lines.append(
            f"| outage: lost events / Redis drops / recovery after endpoint is back | "
            f"{fmt(sum(max(v, 0) for v in (outage.get('lost') or {}).values()) if outage.get('lost') is not None else None)} / "
            f"{outage['redis_drops']} / {fmt(outage.get('recovered_seconds_after_up'), 1)} s | |")
    unscraped = results.get("unscraped", {})
    if "never_scraped" in unscraped:
        lines.append(
            f"| RSS growth at {unscraped['rate']:,} ev/s, /metrics never scraped / scraped every 1 s (MiB/min) | "
            f"{fmt(unscraped['never_scraped']['rss_growth_mib_per_min'], 1)} / "
            f"{fmt(unscraped['scraped']['rss_growth_mib_per_min'], 1)} | |")
    diagnostics = results.get("diagnostics", {})
    if "decode" in diagnostics:
        decode = diagnostics["decode"]
        lines += ["", "| diagnostics (before/after figures for the bottlenecks) | value |", "|---|---|",
                  f"| decode, ns per event: ingestd / single-pass prototype | {fmt(decode['ingestd_decode_ns_per_event'], 0)} / "
                  f"{fmt(decode['single_pass_visitor_ns_per_event'], 0)} |",
                  f"| resident bytes per decoded event (payload {fmt(decode['payload_bytes_per_event'], 0)} B) | "
                  f"{fmt(decode['resident_bytes_per_decoded_event'], 0)} |"]
        for name, entry in diagnostics.get("fan_out", {}).items():
            lines.append(
                f"| drain with {name.replace('_', ' ')}: events/s, CPU us/event, context switches/1000 events | "
                f"{fmt(entry['events_per_s'])} / {fmt(entry['cpu_us_per_event'], 2)} / "
                f"{fmt(entry['context_switches_per_1000_events'], 0)} |")
    errors = [f"- {key}: {value['error']}" for key, value in results.items() if isinstance(value, dict) and "error" in value]
    if errors:
        lines += ["", "Scenarios that failed in this run:", ""] + errors
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run for development (< 3 min)")
    parser.add_argument("--reps", type=int, default=0, help="repetitions per scenario (default 3; quick 1)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every event count")
    parser.add_argument("--latency-rate", type=int, default=0, help="events/s of the latency scenario")
    parser.add_argument("--latency-seconds", type=int, default=0, help="length of the latency measurement (default 20; quick 8)")
    parser.add_argument("--outage-seconds", type=int, default=0, help="length of the sink outage (default 30; quick 10)")
    parser.add_argument("--sustained-seconds", type=int, default=None,
                        help="length of each sustained end-to-end run (default 15; quick 0 = skipped)")
    parser.add_argument("--only", default="", help="comma-separated: ingest_ceiling,end_to_end,per_sink,latency,outage,unscraped,diagnostics")
    parser.add_argument("--ingestd", required=True)
    parser.add_argument("--benchraw", required=True)
    parser.add_argument("--benthos", default="")
    parser.add_argument("--benthos-note", default="")
    parser.add_argument("--work", default=os.path.join(BENCH_DIR, "work", "runs"))
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    args = parser.parse_args()
    bench = Bench(args)
    prune_runs(args.work, keep=5)
    log(f"run {bench.run_id}: work dir {bench.workdir}")
    results = bench.run()
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "latest.json")
    with open(json_path, "w") as json_file:
        json.dump(results, json_file, indent=1, default=str)
    markdown = render_markdown(results)
    with open(os.path.join(args.out, "latest.md"), "w") as markdown_file:
        markdown_file.write(markdown)
    print(markdown)
    log(f"wrote {json_path} and latest.md in {results['meta']['seconds']} s")


if __name__ == "__main__":
    main()
