#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite fuzzingclient report (index.json) for corecast.

    python3 tools/autobahn/summarise.py reports/autobahn/index.json [MORE.json...] [--min-passed N]

Several reports (run.sh's parallel parts, each a share of the cases against one server) are
read as one: their cases are merged per agent.

Verdict per case:
  passed   behavior is OK, NON-STRICT or INFORMATIONAL, and behaviorClose is OK or INFORMATIONAL
  skipped  behavior is UNIMPLEMENTED (e.g. permessage-deflate cases when they are run)
  failed   anything else (FAILED, WRONG CODE, UNCLEAN, ...)

Prints counts per behavior, every case that is not a plain OK with the report's own account
of expected vs observed, and last a line `N passed, N failed, N skipped`.
Exit status: 0 nothing failed (and at least --min-passed passed), 1 otherwise, 2 no report.
"""

import argparse
import collections
import json
import os
import re
import sys

PASS_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASS_CLOSE = {"OK", "INFORMATIONAL"}


def case_key(case_id):
    """'9.10.2' -> (9, 10, 2) so that cases sort as the suite numbers them."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"\.", case_id))


def verdict(entry):
    behavior = entry.get("behavior")
    if behavior == "UNIMPLEMENTED":
        return "skipped"
    if behavior in PASS_BEHAVIOR and entry.get("behaviorClose") in PASS_CLOSE:
        return "passed"
    return "failed"


def case_details(report_dir, entry):
    """The per-case JSON file: description, expectation, result and close details."""
    name = entry.get("reportfile")
    if not name:
        return None
    path = os.path.join(report_dir, name.replace(".html", ".json"))
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def short(value, limit=300):
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", nargs="+", help="path to the report's index.json (or several)")
    ap.add_argument("--min-passed", type=int, default=0,
                    help="also fail when fewer than this many cases passed")
    args = ap.parse_args()

    index = {}
    # Where each case's own report file is: beside the index.json that listed it.
    case_dir = {}
    for path in args.index:
        try:
            with open(path) as f:
                part = json.load(f)
        except (OSError, ValueError) as e:
            print("no usable report at %s: %s" % (path, e), file=sys.stderr)
            print("0 passed, 0 failed, 0 skipped")
            return 2
        if not part:
            print("report %s lists no agent" % path, file=sys.stderr)
            print("0 passed, 0 failed, 0 skipped")
            return 2
        for agent, cases in part.items():
            for case_id, entry in cases.items():
                if case_id in index.get(agent, {}):
                    print("case %s is in two reports" % case_id, file=sys.stderr)
                    return 2
                index.setdefault(agent, {})[case_id] = entry
                case_dir[(agent, case_id)] = os.path.dirname(os.path.abspath(path))

    totals = collections.Counter()
    for agent, cases in sorted(index.items()):
        by_behavior = collections.Counter()
        by_close = collections.Counter()
        notable = []
        for case_id in sorted(cases, key=case_key):
            entry = cases[case_id]
            v = verdict(entry)
            totals[v] += 1
            by_behavior[entry.get("behavior")] += 1
            by_close[entry.get("behaviorClose")] += 1
            if v != "passed" or entry.get("behavior") != "OK":
                notable.append((case_id, v, entry))

        print("agent %s: %d cases" % (agent, len(cases)))
        print("  behavior:      " + ", ".join(
            "%s %d" % (b, n) for b, n in sorted(by_behavior.items(), key=lambda kv: str(kv[0]))))
        print("  behaviorClose: " + ", ".join(
            "%s %d" % (b, n) for b, n in sorted(by_close.items(), key=lambda kv: str(kv[0]))))
        durations = [c.get("duration") or 0 for c in cases.values()]
        if durations:
            slowest = max(cases, key=lambda k: cases[k].get("duration") or 0)
            print("  case time: %.1f s in all, slowest %s (%d ms)" % (
                sum(durations) / 1000.0, slowest, cases[slowest].get("duration") or 0))

        for case_id, v, entry in notable:
            if v == "skipped":
                continue
            print("  %-8s %-7s behavior=%s behaviorClose=%s remoteCloseCode=%s" % (
                case_id, v.upper(), entry.get("behavior"), entry.get("behaviorClose"),
                entry.get("remoteCloseCode")))
            if v != "failed":
                continue
            d = case_details(case_dir[(agent, case_id)], entry)
            if d is None:
                continue
            print("      case:     " + short(d.get("description", "")))
            print("      expected: " + short(d.get("expectation", "")))
            print("      result:   " + short(d.get("result", "")))
            print("      close:    " + short(d.get("resultClose", "")))
            if "expected" in d:
                print("      expected events: " + short(d["expected"]))
            if "received" in d:
                print("      observed events: " + short(d["received"]))
        skipped = [c for c, v, _ in notable if v == "skipped"]
        if skipped:
            print("  skipped (UNIMPLEMENTED): %d cases, %s .. %s" % (
                len(skipped), skipped[0], skipped[-1]))

    passed, failed, skipped = totals["passed"], totals["failed"], totals["skipped"]
    ok = failed == 0 and passed >= args.min_passed
    if passed < args.min_passed:
        print("only %d cases passed; at least %d must" % (passed, args.min_passed), file=sys.stderr)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
