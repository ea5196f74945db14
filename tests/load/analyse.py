#!/usr/bin/env python3
"""Reads a load run of the controller (tests/load/run) and prints its figures as Markdown.

usage: analyse.py <controller.log (JSON lines)> <samples.tsv> <interval seconds> <window start (unix s)>

A sync starts at the controller's "sync due" line and ends at the engine's "sync finished" line.
For each GitSync: a missed sync is a pause from one sync's end to the next one's start longer than
two intervals; an overlap is a sync that starts before the same GitSync's previous sync ended.
"""
import json
import statistics
import sys
from datetime import datetime


def ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main():
    log, samples_path, interval, window_start = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    starts, ends, failed, changed = {}, {}, 0, 0
    for line in open(log, encoding="utf-8", errors="replace"):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        fields = entry.get("fields", {})
        message = fields.get("message", "")
        if message == "sync due":
            name = fields.get("sync", "").split("/")[-1]
            starts.setdefault(name, []).append(ts(entry["timestamp"]))
        elif message == "sync finished":
            name = entry.get("span", {}).get("sync", "")
            ends.setdefault(name, []).append(ts(entry["timestamp"]))
            if fields.get("ok") is False:
                failed += 1
            if ts(entry["timestamp"]) >= window_start:
                changed += int(fields.get("created", 0)) + int(fields.get("configured", 0))

    samples = [line.split("\t") for line in open(samples_path).read().splitlines()[1:]]
    samples = [(float(t), int(rss), float(cpu), float(runs)) for t, rss, cpu, runs in samples]
    window_end = samples[-1][0]

    syncs, missed, overlaps, durations, worst_pause = 0, 0, 0, [], 0.0
    for name in sorted(starts):
        pairs = list(zip(starts[name], ends.get(name, [])))
        pairs = [(s, e) for s, e in pairs if window_start <= s <= window_end]
        syncs += len(pairs)
        durations += [e - s for s, e in pairs]
        for (s0, e0), (s1, _) in zip(pairs, pairs[1:]):
            if s1 < e0:
                overlaps += 1
            pause = s1 - e0
            worst_pause = max(worst_pause, pause)
            if pause > 2 * interval:
                missed += 1
        if len(starts[name]) - len(ends.get(name, [])) > 1:
            overlaps += 1  # more starts than ends: a sync started while one was running
    seconds = window_end - window_start
    rss = [s[1] / 1024 for s in samples]
    cpu = samples[-1][2] - samples[0][2]
    runs = samples[-1][3] - samples[0][3]
    # Memory trend over the second half: least-squares slope in MiB per minute.
    half = samples[len(samples) // 2:]
    xs, ys = [s[0] / 60 for s in half], [s[1] / 1024 for s in half]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-9)

    gitsyncs = len(starts)
    print(f"| measure | value |")
    print(f"|---|---|")
    print(f"| window | {seconds:.0f} s, {gitsyncs} GitSyncs, interval {interval:g} s |")
    print(f"| syncs run | {syncs} (metrics: {runs:.0f}); {failed} failed |")
    print(f"| objects written | {changed} (one per commit is expected; 0 for the no-op syncs) |")
    print(f"| syncs per GitSync | {syncs / max(gitsyncs, 1):.1f} (at most {seconds / interval:.0f} if a sync took no time) |")
    print(f"| missed (pause > 2 intervals) | {missed}; longest pause between syncs {worst_pause:.2f} s |")
    print(f"| overlapping syncs of one GitSync | {overlaps} |")
    if durations:
        q = statistics.quantiles(durations, n=100)
        print(f"| sync duration | median {statistics.median(durations):.3f} s, p99 {q[98]:.3f} s, max {max(durations):.3f} s |")
    print(f"| RSS | start {rss[0]:.1f} MiB, end {rss[-1]:.1f} MiB, min {min(rss):.1f}, max {max(rss):.1f}; second-half trend {slope:+.3f} MiB/min |")
    minutes = [rss[min(range(len(samples)), key=lambda i: abs(samples[i][0] - window_start - 60 * m))] for m in range(0, int(seconds // 60) + 1)]
    print(f"| RSS each minute (MiB) | {' '.join(f'{v:.1f}' for v in minutes)} |")
    print(f"| CPU | {cpu:.1f} s in {seconds:.0f} s ({100 * cpu / seconds:.1f} % of one core); {cpu / max(seconds / interval, 1) * 1000:.0f} ms per interval; {cpu / max(syncs, 1) * 1000:.1f} ms per sync |")
    ok = missed == 0 and overlaps == 0 and failed == 0
    print()
    print("result:", "no missed or overlapping syncs, none failed" if ok else "FAILED: missed, overlapping or failed syncs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
