"""The seed sweep of the figure tests: every test marked ``figure`` over several lab base models and test
seeds, with each figure's bound, minimum, median and maximum (not part of ``make test``).

    make seed-sweep                                          # 5 base-model seeds x 2 test seeds
    python tests/seed_sweep.py --lab-seeds 0 1 --test-seeds 0 --out runs/seed-sweep-quick

Each (lab seed, test seed) is one pytest process (``--lab-seed``, ``--test-seed``, ``-m figure``) whose
JUnit XML keeps the properties the ``figure`` fixture records. A base model not yet in ``$RLHF_HOME`` is
built first (about 90 s each on 2 cores). Writes ``results.json`` and ``RESULTS.md`` in ``--out``; exits
1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(lab_seed: int, test_seed: int, out: Path, pytest_args: list[str]) -> dict:
    """One pytest run of the figure tests; its figures and outcomes per test."""
    xml = out / f"junit-lab{lab_seed}-test{test_seed}.xml"
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "figure", "-o", "junit_family=xunit1",
        f"--lab-seed={lab_seed}", f"--test-seed={test_seed}", f"--junitxml={xml}", *pytest_args,
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (out / f"log-lab{lab_seed}-test{test_seed}.txt").write_text(proc.stdout + proc.stderr)
    tests = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else "passed"
        outcome = "skipped" if case.find("skipped") is not None else outcome
        props = {p.get("name"): float(p.get("value")) for p in case.iter("property")}
        tests[name] = {"outcome": outcome, "figures": props}
    return {
        "lab_seed": lab_seed,
        "test_seed": test_seed,
        "rc": proc.returncode,
        "seconds": seconds,
        "tests": tests,
    }


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (test, figure): its bound, and min / median / max over the runs."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    bounds: dict[tuple[str, str], str] = {}
    failures: dict[str, int] = defaultdict(int)
    for run in runs:
        for test, result in run["tests"].items():
            failures[test] += result["outcome"] == "failed"
            for key, value in result["figures"].items():
                name, _, side = key.partition(":")
                if side:
                    bounds[(test, name)] = f"{'>' if side == 'above' else '<'} {value:g}"
                else:
                    values[(test, name)].append(value)
    return [
        {
            "test": test, "figure": name, "bound": bounds.get((test, name), ""), "n": len(v),
            "min": min(v), "median": statistics.median(v), "max": max(v), "failed_runs": failures[test],
        }
        for (test, name), v in sorted(values.items())
    ]  # fmt: skip


def markdown(rows: list[dict], runs: list[dict]) -> str:
    lab = sorted({r["lab_seed"] for r in runs})
    test = sorted({r["test_seed"] for r in runs})
    lines = [
        "# Seed sweep of the figure tests",
        "",
        f"{time.strftime('%Y-%m-%d')}; lab base-model seeds {lab} x test seeds {test} ({len(runs)} runs, "
        f"{sum(r['seconds'] for r in runs) / 60:.1f} min); `python tests/seed_sweep.py`.",
        "",
        "| test | figure | bound | min | median | max | runs | failed runs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['test']} | {r['figure']} | {r['bound']} | {r['min']:.4f} | {r['median']:.4f} | "
            f"{r['max']:.4f} | {r['n']} | {r['failed_runs']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--test-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "seed-sweep")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --), e.g. a test file")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for lab_seed in args.lab_seeds:
        for test_seed in args.test_seeds:
            run = run_one(lab_seed, test_seed, args.out, args.pytest_args)
            failed = [t for t, r in run["tests"].items() if r["outcome"] == "failed"]
            print(f"lab seed {lab_seed}, test seed {test_seed}: {len(run['tests'])} tests, "
                  f"{len(failed)} failed {failed or ''} in {run['seconds']:.0f}s", flush=True)  # fmt: skip
            runs.append(run)
    rows = summarise(runs)
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "figures": rows}, indent=2))
    (args.out / "RESULTS.md").write_text(markdown(rows, runs))
    print(markdown(rows, runs))
    return int(any(r["rc"] != 0 for r in runs))


if __name__ == "__main__":
    sys.exit(main())
