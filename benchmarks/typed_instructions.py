"""Instructions per row, typed against plain text: the noise-free side of typed.py.

    python benchmarks/typed_instructions.py          # 1,500 and 3,500 rows each way
    python benchmarks/typed_instructions.py --rows 500 1500

On a shared VM the speed of a round drifts by a fifth over minutes, as much as the
difference ``benchmarks/typed.py`` looks for. This script counts instead: it runs the
client of each way under valgrind's callgrind (instructions executed, and the
simulated first-level cache misses) at two row counts, against one emulator in its
own process, and prints the difference divided by the difference in rows: the cost
of one more row, with every fixed cost (imports, warm-up, the first Arrow use)
cancelled out. Each child warms up on 1,100 rows first, as typed.py does.

Caveat: valgrind runs without some CPU extensions (SHA-NI among them), so the cache
key's SHA-256, longer by the schema in a typed request, counts about 18,000
instructions more per row here while it takes 0.4 us on the real CPU; it is printed
apart (libcrypto) and left out of the ratio.

Needs ``valgrind`` (``apt-get install valgrind``); the four children run at once and
take about 5 minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import emulator_process

CHILD = """
import sys
sys.path.insert(0, {bench!r})
from typed import Ticket, prompts, run
url, way, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
df, _ = prompts(max(n, 1100))
kw = {{"response_format": Ticket}} if way == "typed" else {{}}
run(url, df.head(1100), **kw)
run(url, df.head(n), **kw)
"""


def count(url: str, way: str, rows: int, out: Path) -> subprocess.Popen[bytes]:
    """Start one child under callgrind (instructions, simulated cache misses)."""
    script = out / "child.py"
    script.write_text(CHILD.format(bench=str(Path(__file__).resolve().parent)))
    return subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--cache-sim=yes",
            f"--callgrind-out-file={out / f'cg.{way}.{rows}'}",
            sys.executable,
            str(script),
            url,
            way,
            str(rows),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def totals(data: Path) -> collections.Counter[str]:
    """Instructions and I1/D1 misses of a callgrind file, and libcrypto's instructions.

    Self costs only (a line after ``calls=`` is a call's inclusive cost); callgrind
    names the object file of each function (``ob=``), compressed as ``(n) name``.
    """
    events: list[str] = []
    names: dict[str, str] = {}
    out: collections.Counter[str] = collections.Counter()
    obj = ""
    after_call = False
    for line in data.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("ob=", "cob=")):
            ref, _, name = line.split("=", 1)[1].partition(" ")
            if name:
                names[ref] = name
            if line.startswith("ob="):
                obj = names.get(ref, ref)
        elif line.startswith("calls="):
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:
                after_call = False
                continue
            values = dict(zip(events, map(int, line.split()[1:]), strict=False))
            for event in ("Ir", "I1mr", "D1mr"):
                out[event] += values.get(event, 0)
            if "libcrypto" in obj:
                out["crypto"] += values.get("Ir", 0)
    return out


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs=2, default=(1500, 3500))
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return False
    small, large = args.rows
    per_row: dict[str, dict[str, float]] = {}
    with emulator_process() as url, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        children = [
            count(url, way, rows, out)
            for way in ("plain", "typed")
            for rows in (small, large)
        ]
        if any(child.wait() != 0 for child in children):
            print("a child failed under valgrind")
            return False
        for way in ("plain", "typed"):
            a = totals(out / f"cg.{way}.{small}")
            b = totals(out / f"cg.{way}.{large}")
            per_row[way] = {k: (b[k] - a[k]) / (large - small) for k in b}
    print(f"## instructions per row (callgrind, {small:,} and {large:,} rows)")
    print(
        f"{'way':8} {'instructions':>13} {'of which SHA-256':>17} {'I1 misses':>10} {'D1 misses':>10}"
    )
    for way, c in per_row.items():
        print(
            f"{way:8} {c['Ir']:13,.0f} {c['crypto']:17,.0f} {c['I1mr']:10,.0f} "
            f"{c['D1mr']:10,.0f}"
        )
    plain, typed = per_row["plain"], per_row["typed"]
    ratio = (plain["Ir"] - plain["crypto"]) / (typed["Ir"] - typed["crypto"])
    print(f"plain / typed instructions per row, SHA-256 left out: {ratio:.3f}")
    return True


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
