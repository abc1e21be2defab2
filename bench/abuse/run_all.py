"""Run every abuse and fault probe (``--quick`` unless ``--full``) and print a table.

    .venv/bin/python -m bench.abuse.run_all [--full] [--only framing,ssrf] [--verbose]

Each probe runs as its own process, one after another (never two at once: the
load probes need the machine).  The table gives each probe's verdict, its run
time and its headline figures; ``--verbose`` prints every check as well (the
failed ones are always printed).  Exit status 1 when a probe failed or did not
finish.  About 3 minutes in --quick mode.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.abuse.common import REPO, clean_environment

# (module, what it probes), in the order they run.
PROBES: list[tuple[str, str]] = [
    ("framing", "1 smuggling and framing"),
    ("garbage_origin", "2 garbage origin"),
    ("poisoning", "3 poisoning matrix"),
    ("ssrf", "4 SSRF matrix"),
    ("faults", "5 Redis/origin/proxy kills"),
    ("unique_urls", "6 unique-URL stream"),
    ("connections", "7 1,000 connections"),
]
# What Report.summary() prints: "== probe: PASS (n/m checks pass); figures".
SUMMARY = re.compile(r"== .*?: (?:PASS|FAIL) \((\d+/\d+) checks pass\)(?:; (.*))?$")
QUICK_LIMIT = 600.0
FULL_LIMIT = 3600.0


def run_probe(module: str, full: bool) -> tuple[str, float, str, str]:
    """(verdict, seconds, summary line, output) of one probe run."""
    argv = [sys.executable, "-m", f"bench.abuse.{module}", *([] if full else ["--quick"])]
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=FULL_LIMIT if full else QUICK_LIMIT,
            env=clean_environment(),
        )
    except subprocess.TimeoutExpired:
        return "TIMEOUT", time.monotonic() - started, "", ""
    took = time.monotonic() - started
    summary = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("== ")), "")
    if not summary:  # it crashed: its traceback says why
        return f"ERROR {done.returncode}", took, "", done.stdout + done.stderr
    return "PASS" if done.returncode == 0 else "FAIL", took, summary, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full runs (about 20 minutes)")
    parser.add_argument("--only", default="", help="comma-separated probe modules")
    parser.add_argument("--verbose", action="store_true", help="print each probe's every check")
    args = parser.parse_args()
    chosen = [p for p in PROBES if not args.only or p[0] in args.only.split(",")]
    rows = []
    for module, title in chosen:
        print(f"running {module} ...", flush=True)
        verdict, took, summary, output = run_probe(module, args.full)
        rows.append((title, verdict, took, summary))
        if args.verbose:
            shown = output.splitlines()
        elif verdict.startswith("ERROR"):
            shown = output.splitlines()[-10:]
        else:
            shown = [line for line in output.splitlines() if line.startswith("FAIL")]
        for line in shown:
            print(f"    {line}", flush=True)
    print()
    width = max(len(title) for title, *_ in rows)
    print(f"{'probe':<{width}}  {'result':<8} seconds  {'checks':>7}  figures")
    for title, verdict, took, summary in rows:
        found = SUMMARY.match(summary)
        checks, figures = (found.group(1), found.group(2) or "") if found else ("", "")
        print(f"{title:<{width}}  {verdict:<8} {took:7.1f}  {checks:>7}  {figures}")
    return 0 if all(verdict == "PASS" for _, verdict, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
