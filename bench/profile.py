#!/usr/bin/env python3
"""Profiles ingestd on one benchmark workload with `perf record` (cpu-clock sampling, call
graphs from DWARF line tables: the release profile keeps `debug = "line-tables-only"`)
and prints the top of the report. Falls back to `valgrind --tool=callgrind` when perf
cannot sample here.

  python3 bench/profile.py ceiling --events 1000000     # source -> decode -> blackholes
  python3 bench/profile.py e2e --events 40000           # the shipped pipeline, 5 stores
  python3 bench/profile.py cassandra --events 200000    # one sink alone (any of the five)

Needs the release binaries (bench/run builds them) and, for e2e, the local services.
Writes bench/work/profile-<workload>.{data,txt}.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import lib  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=["ceiling", "e2e"] + harness.SINKS)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--tool", choices=["perf", "callgrind"], default="perf")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(harness.REPO, "target"))
    parser.add_argument("--ingestd", default=os.path.join(target, "release", "ingestd"))
    parser.add_argument("--benchraw", default=os.path.join(target, "release", "benchraw"))
    args = parser.parse_args()
    work = os.path.join(harness.BENCH_DIR, "work")
    bench_args = argparse.Namespace(
        quick=True, reps=1, scale=1.0, latency_rate=0, outage_seconds=0, only="", ingestd=args.ingestd,
        benchraw=args.benchraw, benthos="", benthos_note="", work=os.path.join(work, "runs"))
    bench = harness.Bench(bench_args)
    server = bench.redis("profile")
    control = server.client()
    control.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
    if args.workload == "ceiling":
        events = args.events or 1_000_000
        channel = "bench.profile"
        process = bench.start_ingestd("profile", bench.blackhole_toml(channel), {}, server.url)
        sinks = harness.SINKS
    elif args.workload == "e2e":
        events = args.events or 40_000
        names = bench.names("profile", "i", 0, server.url)
        channel = names["channel"]
        process = bench.start_ingestd("profile", bench.analytics_toml(), bench.store_env(names), server.url)
        sinks = harness.SINKS
    else:
        events = args.events or 200_000
        sink = args.workload
        names = bench.names("profile", "i", 0, server.url)
        channel = names["channel"]
        env = {key: value for key, value in bench.store_env(names).items()
               if "__SINKS__" not in key or f"__SINKS__{sink.upper()}__" in key}
        process = bench.start_ingestd("profile", bench.single_sink_toml(sink, channel), env, server.url)
        sinks = [sink]
    bench.wait_subscribed(server, channel)
    data = os.path.join(work, f"profile-{args.workload}.data")
    if args.tool == "perf" and shutil.which("perf"):
        recorder = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "1999", "--call-graph", "dwarf,16384", "-o", data,
             "-p", str(process.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    else:
        raise SystemExit("callgrind: run ingestd under `valgrind --tool=callgrind` by hand (see README)")
    time.sleep(1)
    started = time.time()
    bench.publish(server.url, channel, events, "prof")
    bench.wait_counts(lambda: bench.ingestd_written(process, sinks), events, stall_seconds=30, interval=0.1)
    elapsed = time.time() - started
    recorder.send_signal(2)
    recorder.wait(timeout=120)
    bench.stop_all()
    bench.cleanup()
    print(f"{events} events in {elapsed:.1f} s ({events / elapsed:,.0f}/s)")
    report = os.path.join(work, f"profile-{args.workload}.txt")
    with open(report, "w") as out:
        subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--percent-limit", "0.7",
                        "--sort", "symbol", "-g", "none"], stdout=out, stderr=subprocess.DEVNULL, check=False)
    with open(report) as text:
        print("".join(text.readlines()[:70]))
    print(f"full report: {report}; callers: perf report -i {data} --no-children -S <symbol> -G")


if __name__ == "__main__":
    main()
