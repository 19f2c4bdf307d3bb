"""The allocation sites holding the most heap at the peak of a dhat profile (dhat-heap.json).

    python3 bench/dhat_top.py dhat.json [miners]

Prints one JSON line for the total and one per site (bytes and blocks at the global peak,
bytes per miner when the number of miners is given), each named by its first frames in
this workspace's code (loka_*), so the owner of the bytes is read off at once.
"""
import json
import re
import sys

path = sys.argv[1]
miners = int(sys.argv[2]) if len(sys.argv) > 2 else 0
d = json.load(open(path))
frames = d["ftbl"]
ours = re.compile(r"\b(loka_\w+)::")


def name(pp):
    """The innermost frames in our crates (up to 3), else the first non-allocator frame."""
    names = []
    for i in pp["fs"]:
        f = frames[i]
        m = re.search(r": (.*?) \(", f)
        fn = m.group(1) if m else f
        if ours.search(fn):
            names.append(re.sub(r"::\{\{closure\}\}|<|>|::h[0-9a-f]{16}", "", fn))
            if len(names) == 3:
                break
    if names:
        return " <- ".join(names)
    for i in pp["fs"]:
        f = frames[i]
        if "alloc::" not in f and "dhat" not in f and "[root]" not in f:
            return f[:160]
    return "?"


total = sum(pp["gb"] for pp in d["pps"])
print(json.dumps({"scenario": "heap at the global peak (dhat t-gmax)", "bytes": total,
                  "blocks": sum(pp["gbk"] for pp in d["pps"]),
                  **({"bytes_per_miner": round(total / miners)} if miners else {})}))
by = {}
for pp in d["pps"]:
    if pp["gb"]:
        k = name(pp)
        b, n = by.get(k, (0, 0))
        by[k] = (b + pp["gb"], n + pp["gbk"])
for k, (b, n) in sorted(by.items(), key=lambda kv: -kv[1][0])[:20]:
    out = {"site": k, "bytes": b, "blocks": n, "share": round(b / total, 3)}
    if miners:
        out["bytes_per_miner"] = round(b / miners, 1)
    print(json.dumps(out))
