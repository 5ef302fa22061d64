"""Reliability report: the bad-input corpus through the real pipeline, as one JSON object.

Builds the corpus of tests/corpus/generate.py (VOC, COCO and YOLO dataset folders made from
../shared/data images and the synthetic generator) in a temporary folder, then, on a local Ray
instance with 2 CPUs:

- one ``prepare`` (``data.root``) + ``shard`` run per layout, every case its own split: what happened
  to each case (kept, converted, clipped, rejected at image or box level, or an error for a whole
  file) and whether records in = records sharded + records rejected held for it;
- every case again with ``data.strict=true`` (one run per case): an error naming the file, or accepted;
  strict mode must stop exactly on the cases the non-strict run rejected anything of.

Each observation is compared with the case's expected outcome; ``input_defects`` counts the cases of
each input defect class (special files, ids with spaces, ids listed twice, JPEG structure, sizes from
the image header, size disagreements) and how many of them behaved exactly as expected in both modes.
``fault_scenarios`` runs the tests marked ``fault`` (killed shard task and Ray worker, killed training
worker, killed driver, MLflow down, disk full or read-only, ...; slow ones included) in a pytest
subprocess and reports each scenario by name: survived (its test passed), null where it was skipped
(with the reason), and its time. ``security_checks`` does the same for the tests marked ``security``
(unsafe loading, archive extraction, loopback services, Ray token authentication refusing clients without
the token, secrets kept out of MLflow and the console, cluster network rules). The JSON states the CPU's kind
(``cpu_capability``, ``native_bf16``) and the Ray CPUs of the corpus runs (``threads``).

    python benchmarks/reliability.py [--shared-data ../shared/data] [--keep DIR] [--faults "fault and not slow"]
                                     [--security "security and not slow"]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the corpus generator and its runner live with the tests
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import NO_MODEL, machine_facts  # noqa: E402

from corpus.generate import INPUT_DEFECTS, build_corpus, corpus_layout  # noqa: E402
from corpus.run import error_message, matches, observe, rejected, run_shard  # noqa: E402

LAYOUTS = ("voc", "coco", "yolo")
RAY_CPUS = 2


def outcome_label(outcome: str, level: str | None) -> str:
    return f"rejected_{level}" if outcome == "rejected" else outcome


def corpus_report(out_dir: Path, shared_data: Path) -> dict:
    cases = build_corpus(out_dir / "corpus", shared_data)
    layout = corpus_layout(out_dir / "corpus")
    per_case: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    for name in LAYOUTS:  # non-strict: one run per layout, whole-file errors one run each
        started = time.perf_counter()
        good = [c for c in cases if c.layout == name and c.outcome != "error"]
        run = run_shard(out_dir / "ws" / name, name, layout.root(name), [c.split for c in good])
        for case in cases:
            if case.layout != name:
                continue
            this = (
                run
                if case.outcome != "error"
                else run_shard(out_dir / "ws" / case.name, name, layout.root(name), [case.split])
            )
            obs = observe(this, case)
            per_case[case.name] = {
                "layout": name,
                "group": case.group,
                "outcome": outcome_label(obs.outcome, obs.level),
                "rejected": rejected(obs),  # anything of it: an image, a box, the whole file
                "accounted": obs.accounted,  # None: the stage failed on the whole file, nothing was sharded
                "matches_expected": matches(case, obs) == [],
            }
        seconds[f"shard_{name}"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    for case in cases:  # strict: one run per case
        run = run_shard(
            out_dir / "strict" / case.layout, case.layout, layout.root(case.layout), [case.split], strict=True
        )
        if run.error is None:
            strict, ok = "accepted", case.strict_error is None
        else:
            message = error_message(run.error)
            strict, ok = "error", case.strict_error is not None and case.strict_error in message
        per_case[case.name]["strict"] = strict
        per_case[case.name]["strict_as_expected"] = ok  # an error naming the file, or accepted when it should be
        per_case[case.name]["strict_stops_iff_rejected"] = (strict == "error") == per_case[case.name]["rejected"]
    seconds["strict_runs"] = round(time.perf_counter() - started, 3)

    outcomes = Counter(c["outcome"] for c in per_case.values())

    def as_expected(c: dict) -> bool:
        return c["matches_expected"] and c["strict_as_expected"] and c["strict_stops_iff_rejected"]

    accounted = [c["accounted"] for c in per_case.values() if c["accounted"] is not None]
    return {
        "cases": len(cases),
        "by_layout": dict(Counter(c["layout"] for c in per_case.values())),
        "outcomes": dict(sorted(outcomes.items())),
        "error_in_strict": sum(c["strict"] == "error" for c in per_case.values()),
        "accepted_in_strict": sum(c["strict"] == "accepted" for c in per_case.values()),
        "strict_as_expected_every_case": all(c["strict_as_expected"] for c in per_case.values()),
        "strict_stops_exactly_when_non_strict_rejects_every_case": all(
            c["strict_stops_iff_rejected"] for c in per_case.values()
        ),
        "records_in_eq_sharded_plus_rejected_every_case": bool(accounted) and all(accounted),
        "cases_checked_for_accounting": len(accounted),
        "matches_expected": sum(c["matches_expected"] for c in per_case.values()),
        "mismatches": sorted(n for n, c in per_case.items() if not as_expected(c)),
        "input_defects": {
            g: {
                "cases": sum(c["group"] == g for c in per_case.values()),
                "as_expected": sum(c["group"] == g and as_expected(c) for c in per_case.values()),
            }
            for g in INPUT_DEFECTS
        },
        "seconds": seconds,
        "per_case": {n: c["outcome"] for n, c in per_case.items()},
        "strict_per_case": {n: c["strict"] for n, c in per_case.items()},
    }


def fault_report(marker_expr: str, junit_xml: Path) -> dict:
    """Run the tests selected by ``-m marker_expr`` in a pytest subprocess; each one's outcome and time."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            marker_expr,
            "-q",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
            f"--junitxml={junit_xml}",
            "tests",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    scenarios = scenarios_from_junit(junit_xml) if junit_xml.exists() else {}
    broken = sorted(n for n, s in scenarios.items() if s.get("reason") == "collection failure")
    scenarios = {n: s for n, s in scenarios.items() if n not in broken}
    return {
        "marker": marker_expr,
        "count": len(scenarios),
        "survived": sum(s["survived"] is True for s in scenarios.values()),
        "failed": sorted(n for n, s in scenarios.items() if s["survived"] is False),
        "skipped": sorted(n for n, s in scenarios.items() if s["survived"] is None),
        "collection_errors": broken,  # test files pytest could not import (their scenarios are missing)
        "pytest_exit_code": done.returncode,  # 0: all passed; 5: none selected
        "seconds_total": round(time.perf_counter() - started, 3),
        "scenarios": scenarios,
    }


def scenarios_from_junit(path: Path) -> dict[str, dict]:
    """``{scenario: {survived, seconds, test, [reason]}}`` from pytest's JUnit XML; a scenario's name is its
    test's name without ``test_``; survived is null for a skipped test."""
    out: dict[str, dict] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        entry: dict = {
            "survived": None if skipped is not None else problem is None,
            "seconds": round(float(case.get("time", 0.0)), 3),
            "test": f"{case.get('classname', '')}::{case.get('name', '')}",
        }
        if problem is not None or skipped is not None:
            entry["reason"] = ((problem if problem is not None else skipped).get("message") or "")[:300]
        out[case.get("name", "").removeprefix("test_")] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shared-data", default=os.environ.get("YOLOV2_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--keep", default=None, help="write the corpus and workspaces here instead of a temp folder")
    parser.add_argument(
        "--faults",
        default="fault",
        metavar="MARKERS",
        help='pytest -m expression selecting the fault scenarios (default "fault"; "none": skip them)',
    )
    parser.add_argument(
        "--security",
        default="security",
        metavar="MARKERS",
        help='pytest -m expression selecting the security checks (default "security"; "none": skip them)',
    )
    args = parser.parse_args()

    from pipelines import ray_auth

    ray_auth.configure(starts_local=True)  # as every Ray of the project: with token authentication
    import ray

    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.get([ray.remote(lambda: None).remote() for _ in range(RAY_CPUS)])  # workers up before the clock starts
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="yolov2-reliability-") as tmp:
        out_dir = Path(args.keep) if args.keep else Path(tmp)
        report = corpus_report(out_dir, Path(args.shared_data))
    report["seconds"]["total"] = round(time.perf_counter() - started, 3)
    ray.shutdown()  # the fault tests start their own Ray instances
    faults: dict = {}
    if args.faults != "none":
        with tempfile.TemporaryDirectory(prefix="yolov2-faults-") as tmp:
            faults = fault_report(args.faults, Path(tmp) / "faults.xml")
    security: dict = {}
    if args.security != "none":
        with tempfile.TemporaryDirectory(prefix="yolov2-security-") as tmp:
            security = fault_report(args.security, Path(tmp) / "security.xml")
    facts = machine_facts(RAY_CPUS, NO_MODEL, "Ray CPUs of the corpus runs (the fault tests start their own)")
    print(
        json.dumps(
            {
                "benchmark": "reliability",
                **facts,
                "bad_input_corpus": report,
                "fault_scenarios": faults,
                "security_checks": security,
            },
            indent=1,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
