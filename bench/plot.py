#!/usr/bin/env python3
"""Draws bench/results/latest.png from latest.json: throughput of ingestd and each
baseline (median, min-max whiskers), latency percentiles per sink, and RSS through the
sink outage."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def bars(results):
    rows = []
    ceiling = results.get("ingest_ceiling", {})
    if "ingestd_events_per_s" in ceiling:
        rows.append(("ingest ceiling", ceiling["ingestd_events_per_s"], ceiling["bare_events_per_s"], "bare subscriber"))
    e2e = results.get("end_to_end", {})
    if "ingestd_events_per_s" in e2e:
        rows.append(("end to end", e2e["ingestd_events_per_s"], e2e.get("benthos_events_per_s"), "Benthos"))
    for sink, entry in results.get("per_sink", {}).items():
        if isinstance(entry, dict) and "ingestd_events_per_s" in entry:
            rows.append((sink, entry["ingestd_events_per_s"], entry["raw_events_per_s"], "raw client"))
    return rows


def whisker(entry):
    if not entry or entry.get("median") is None:
        return 0, [[0], [0]]
    return entry["median"], [[entry["median"] - entry["min"]], [entry["max"] - entry["median"]]]


def main(json_path, png_path):
    with open(json_path) as json_file:
        results = json.load(json_file)
    figure, axes = plt.subplots(1, 3, figsize=(18, 5.5))

    throughput = axes[0]
    rows = bars(results)
    for index, (name, ours, theirs, baseline) in enumerate(rows):
        value, error = whisker(ours)
        throughput.bar(index - 0.2, value, 0.4, yerr=error, color="tab:blue", label="ingestd" if index == 0 else None)
        value, error = whisker(theirs)
        throughput.bar(index + 0.2, value, 0.4, yerr=error, color="tab:gray", label="baseline" if index == 0 else None)
        if ours and theirs and ours.get("median") and theirs.get("median"):
            throughput.annotate(f"{ours['median'] / theirs['median']:.2f}x", (index, max(ours["median"], theirs["median"])),
                                ha="center", va="bottom", fontsize=8)
    throughput.set_xticks(range(len(rows)))
    throughput.set_xticklabels([f"{name}\nvs {baseline}" for name, _, _, baseline in rows], fontsize=7)
    throughput.set_yscale("log")
    throughput.set_ylabel("events/s (log)")
    throughput.set_title("throughput: ingestd vs baseline (same run)")
    throughput.legend()

    latency = axes[1]
    sinks = results.get("latency", {}).get("sinks", {})
    names = list(sinks)
    for offset, (label, color) in enumerate((("p50", "tab:green"), ("p99", "tab:orange"), ("p999", "tab:red"))):
        values = [sinks[name].get(label + "_ms") or 0 for name in names]
        latency.bar([index + (offset - 1) * 0.27 for index in range(len(names))], values, 0.27, label=label, color=color)
    latency.set_xticks(range(len(names)))
    latency.set_xticklabels(names, fontsize=8)
    latency.set_ylabel("ms, publish to written")
    latency.set_title(f"latency at {results.get('latency', {}).get('rate', '?')} events/s")
    latency.legend()

    memory = axes[2]
    outage = results.get("outage", {})
    trace = outage.get("rss_trace") or []
    if trace:
        memory.plot([point[0] for point in trace], [point[1] for point in trace], color="tab:blue", label="ingestd RSS")
        start, end = outage.get("outage_window", [0, 0])
        memory.axvspan(start, end, color="tab:red", alpha=0.15, label="DynamoDB endpoint down")
        bound = outage.get("rss_before_mib", 0) + outage.get("memory_bound_mib", 0)
        memory.axhline(bound, color="tab:red", linestyle="--", label="before + capacity x event size")
        queue = outage.get("queue_trace") or []
        if queue:
            depth = memory.twinx()
            depth.plot([point[0] for point in queue], [point[1] for point in queue], color="tab:gray", linestyle=":",
                       label="dynamodb queue depth")
            depth.set_ylabel("queued events")
        memory.set_xlabel("s")
        memory.set_ylabel("MiB")
        memory.legend(loc="upper left", fontsize=8)
    memory.set_title(f"RSS through a {outage.get('outage_seconds', '?')} s sink outage")

    meta = results.get("meta", {})
    figure.suptitle(f"ingestd bench {meta.get('run_id')} ({meta.get('mode')}, {meta.get('date_utc')}, commit {meta.get('git_commit')})")
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    print(f"wrote {png_path}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
