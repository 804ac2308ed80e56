"""Turns raw benchmark rows into the markdown table of BENCHMARKS.md.

Input: a TSV with columns section, tool, settings, run, wall_s, user_s, sys_s, maxrss_kb,
bytes, files; optionally a sentence to print under the table. Output: the table for one section (medians of runs, min-max, ratio to
model-loader, peak RSS, client CPU per GiB), printed to stdout, and replaced in BENCHMARKS.md
between `<!-- bench:SECTION -->` and `<!-- /bench:SECTION -->`.
"""
import csv
import re
import statistics
import sys

rows_path, section, md_path, header = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
# An optional sentence under the table (e.g. what model-loader's stream ramp decided per round).
footer = sys.argv[5] if len(sys.argv) > 5 else ""
rows = [r for r in csv.DictReader(open(rows_path), delimiter="\t") if r["section"] == section]
tools = []
for r in rows:
    key = (r["tool"], r["settings"])
    if key not in tools:
        tools.append(key)


def med(key, tool):
    return statistics.median(float(r[key]) for r in rows if (r["tool"], r["settings"]) == tool)


ours = next(t for t in tools if t[0] == "model-loader")
# /usr/bin/time resolves 10 ms: a smoke run's tiny reads can show 0.00.
TICK = 0.01
base = max(med("wall_s", ours), TICK)
lines = [
    "| tool | settings | runs | median wall s (min–max) | MiB/s | files/s | wall ÷ model-loader | peak RSS MiB | client CPU s/GiB (min–max) |",
    "|---|---|---|---|---|---|---|---|---|",
]
for t in tools:
    rs = [r for r in rows if (r["tool"], r["settings"]) == t]
    walls = [float(r["wall_s"]) for r in rs]
    wall = max(statistics.median(walls), TICK)
    size = int(rs[0]["bytes"])
    files = int(rs[0]["files"])
    cpus = [(float(r["user_s"]) + float(r["sys_s"])) / (int(r["bytes"]) / 2**30) for r in rs]
    cpu = statistics.median(cpus)
    rss = max(int(r["maxrss_kb"]) for r in rs) / 1024
    lines.append(
        f"| {t[0]} | {t[1]} | {len(rs)} | {wall:.2f} ({min(walls):.2f}–{max(walls):.2f}) | "
        f"{size / 2**20 / wall:.0f} | {files / wall:.0f} | {wall / base:.2f} | {rss:.0f} | "
        f"{cpu:.2f} ({min(cpus):.2f}–{max(cpus):.2f}) |"
    )
table = header + "\n\n" + "\n".join(lines) + "\n" + (f"\n{footer}\n" if footer else "")
print(table)
try:
    md = open(md_path).read()
except FileNotFoundError:
    md = "# Benchmarks\n\nProduced by `scripts/bench.sh`; see the notes at the end.\n"
block = f"<!-- bench:{section} -->\n{table}<!-- /bench:{section} -->"
pattern = re.compile(rf"<!-- bench:{section} -->.*?<!-- /bench:{section} -->", re.S)
md = pattern.sub(lambda _: block, md) if pattern.search(md) else md.rstrip("\n") + "\n\n" + block + "\n"
open(md_path, "w").write(md)
