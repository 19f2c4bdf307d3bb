#!/usr/bin/env python3
"""The values table of charts/loka/README.md, made from values.yaml's `# --` comments.

    python3 tests/chart_readme.py          rewrite the table in the README
    python3 tests/chart_readme.py --check  exit 1 when the README's table differs
"""
import re
import sys

CHART = "charts/loka"
HEADER = "| key | default | description |\n| --- | --- | --- |\n"


def rows(values_text):
    out, path, doc = [], [], []
    for line in values_text.split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^(\s*)# -- (.*)$", line)
        if m:
            doc = [m.group(2)]
            continue
        m = re.match(r"^(\s*)# (.*)$", line)
        if m and doc:
            doc.append(m.group(2))
            continue
        m = re.match(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):\s*(.*)$", line)
        if m:
            depth = len(m.group(1)) // 2
            path = path[:depth] + [m.group(2)]
            if doc:
                default = m.group(3) or "(see values.yaml)"
                out.append(f"| `{'.'.join(path)}` | `{default}` | {' '.join(doc)} |")
        doc = []
    return out


def main():
    table = HEADER + "\n".join(rows(open(f"{CHART}/values.yaml").read())) + "\n"
    readme = open(f"{CHART}/README.md").read()
    start = readme.index(HEADER)
    end = readme.find("\n\n", start)
    end = len(readme) if end < 0 else end + 1
    new = readme[:start] + table + readme[end:]
    if "--check" in sys.argv:
        if new != readme:
            print(f"{CHART}/README.md: the values table differs from values.yaml; "
                  "run python3 tests/chart_readme.py")
            sys.exit(1)
        print("chart README values table matches values.yaml")
        return
    open(f"{CHART}/README.md", "w").write(new)


main()
