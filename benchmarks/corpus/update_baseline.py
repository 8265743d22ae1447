"""Record today's validate errors as the regression baseline tests/test_corpus.py holds the estimator to.

    python benchmarks/corpus/update_baseline.py

Writes benchmarks/corpus/baseline.json: per record its signed error today (records outside issue 16's per-point
target are the known misses: their target test is an expected failure, and they must not get worse by more than
``MARGIN``), and per phase group the median and p90 of |error|. Run it after a change to the estimator or the
corpus that moves the errors on purpose, and say why in the commit; never to make a failing test pass unread.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from memplan.validate import load_corpus, validate  # noqa: E402

OUT = Path(__file__).resolve().parent / "baseline.json"


def main() -> int:
    summary = validate(load_corpus())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    data = {
        "_doc": "Today's errors of memplan validate over the default corpus (benchmarks/corpus/update_baseline.py). "
                "tests/test_corpus.py: a record outside the target band is a known miss (its target test an "
                "expected failure) and must not move further out by more than 1 percentage point; a group's "
                "median and p90 |error| must not grow by more than 1 percentage point.",
        "made": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "on_commit": commit + " (+ working tree)",
        "groups": {g.group: {"n": g.n, "median_abs_error": round(g.median_abs_error, 6),
                             "p90_abs_error": round(g.p90_abs_error, 6)} for g in summary.groups},
        "errors": {r.id: round(r.error, 6) for r in summary.results if r.error is not None},
    }
    OUT.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    print(f"{len(data['errors'])} record errors, {len(data['groups'])} groups -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
