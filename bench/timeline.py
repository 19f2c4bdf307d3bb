#!/usr/bin/env python3
"""Where in time a load run's slow replies fell (diagnosis for bench/run.sh storage).

    bench/timeline.py BENCH.json [POSTGRES_LOG]

BENCH.json is loka-bench's report of a run with --timeline-ms. Prints one JSON line:
- how concentrated the slow replies are (the share of them in the worst 1 % and 10 % of
  slots: spikes give a high share, a uniformly slower path a low one);
- the slow replies folded by phase over a period (--period-ms, default 100: the writer's
  flush interval), so a burst that repeats each flush shows as one heavy phase;
- the worst slots, with the PostgreSQL log lines (checkpoints, autovacuum, statements)
  stamped within 200 ms before them when a log with `%m` timestamps is given.
"""
import datetime
import json
import re
import sys


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    period = next((int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--period-ms=")), 100)
    if not args:
        sys.exit(__doc__)
    report = json.load(open(args[0]))
    t = report.get("timeline")
    if not t:
        sys.exit(f"{args[0]}: no timeline (run loka-bench with --timeline-ms)")
    slot, slow, replies, max_us = t["slot_ms"], t["slow"], t["replies"], t["max_us"]
    total_slow = sum(slow)
    ranked = sorted(range(len(slow)), key=lambda i: slow[i], reverse=True)

    def share_in_worst(frac: float) -> float:
        k = max(1, int(len(slow) * frac))
        return round(sum(slow[i] for i in ranked[:k]) / total_slow, 3) if total_slow else 0.0

    phases = max(1, period // slot)
    fold = [0] * phases
    for i, c in enumerate(slow):
        fold[i % phases] += c
    events = parse_log(args[1]) if len(args) > 1 else []
    worst = []
    for i in ranked[:8]:
        if slow[i] == 0:
            break
        at = t["start_unix_ms"] + i * slot
        near = [f"{(ms - at):+d} ms {line}" for ms, line in events if at - 200 <= ms <= at + slot]
        worst.append({"t_ms": i * slot, "replies": replies[i], "slow": slow[i], "max_us": max_us[i],
                      "postgres_log": near[:4]})
    print(json.dumps({
        "slot_ms": slot, "slow_over_us": t["slow_us"], "replies": sum(replies), "slow": total_slow,
        "slow_share_in_worst_1pct_of_slots": share_in_worst(0.01),
        "slow_share_in_worst_10pct_of_slots": share_in_worst(0.10),
        f"slow_by_phase_of_{period}ms": fold,
        "postgres_events_in_run": sum(1 for ms, _ in events
                                      if t["start_unix_ms"] <= ms <= t["start_unix_ms"] + len(slow) * slot),
        "worst_slots": worst,
    }))


STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\w+)")


def parse_log(path: str) -> list[tuple[int, str]]:
    """(unix ms, text) of each stamped line; the zone is taken as UTC (log_timezone)."""
    out = []
    for line in open(path, errors="replace"):
        m = STAMP.match(line)
        if not m:
            continue
        at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
        out.append((int(at.timestamp() * 1000), line[len(m.group(0)):].strip()[:160]))
    return out


if __name__ == "__main__":
    main()
