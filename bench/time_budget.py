"""One `cli.py search --time-budget` process, timed whole: wall time against the budget, the plan, test figures.

    python bench/time_budget.py --data ../shared/data/cxr3-dev --budget 5m
        [--backbones mobilenet_025] [--weights imagenet] [--image-size 224] [--work bench-runs/time-budget]
        [--unbudgeted RUN_DIR]

The target (issue 32, docs/time-budget.md): on cxr3-dev (2,000 films, 224 px, mobilenet_025
from ImageNet) a ``--time-budget`` job ends between 85% and 100% of its budget, the whole
process timed as a user sees it (interpreter start and exit included), and a 5-minute one
scores a test macro-F1 within 0.01 of the unbudgeted default job's (``--unbudgeted``: that
job's run directory, whose ``report/metrics.json`` is read). The run directory starts empty
(its decoded and activation caches too), so the data stage and the extraction count as a
first run's do. Prints one summary and writes ``results.json`` into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from cxr_tuner.search.figures.text import duration_text
from cxr_tuner.search.figures.text import parse_duration  # noqa: E402  (light: no TensorFlow
from cxr_tuner.search.engine.layout import RunLayout


def main(argv=None) -> dict:
    args = _arguments(argv)
    budget = parse_duration(args.budget)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run_dir = work / "run"
    command = [sys.executable, "cli.py", "search", "--data", str(Path(args.data).resolve()), "--run-dir", str(run_dir),
               "--backbones", args.backbones, "--weights", args.weights, "--image-size", str(args.image_size),
               "--seed", str(args.seed), "--time-budget", args.budget]
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(work / "search.log", "w") as log:
        status = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    layout = RunLayout(run_dir)
    lines = (work / "search.log").read_text().splitlines()
    results = {
        "command": command, "exit_status": status, "budget_seconds": budget, "wall_seconds": seconds,
        "within_budget": seconds <= budget, "share_used": seconds / budget,
        "exported_model": (layout.export / "model.keras").is_file(),
        "plan_lines": [line for line in lines if line.startswith(("time budget", "plan: "))],
        "plan": read_json(layout.plan), "test": test_figures(read_json(layout.metrics)),
        "unbudgeted_test": test_figures(read_json(RunLayout(args.unbudgeted).metrics)) if args.unbudgeted else None,
    }
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"budget {duration_text(budget)}: wall time {seconds:.1f} s, {seconds / budget:.1%} of the budget "
          f"({'within' if results['within_budget'] else 'OVER'} it; target 85-100%), exit status {status}, "
          f"export/model.keras {'written' if results['exported_model'] else 'MISSING'}")
    for line in results["plan_lines"]:
        print("  " + line)
    plan = results["plan"] or {}
    if plan:
        print(f"  search: {plan.get('trials_run')} trials of {plan.get('trials')} planned, stopped at its deadline: "
              f"{plan.get('search_stopped')}; the job's own clock: {plan.get('finished', float('nan')):.1f} s")
    if results["test"]:
        print("  test: " + ", ".join(f"{k} {v:.3f}" for k, v in results["test"].items()))
    if results["unbudgeted_test"] and "macro_f1" in results["test"]:
        other = results["unbudgeted_test"]["macro_f1"]
        print(f"  unbudgeted job ({args.unbudgeted}): test macro_f1 {other:.3f}; this job "
              f"{results['test']['macro_f1'] - other:+.3f}")
    for boundary in plan.get("boundaries", []):
        print(f"  after {boundary['after']} at {boundary['elapsed']:.0f} s: {boundary['decided']}")
    if plan.get("tail_took"):
        took = plan["tail_took"]
        print("  after the retrain, priced " + ", ".join(f"{k} {v:.0f} s" for k, v in plan.get("tail_parts", {}).items())
              + "; took " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items() if v is not None)
              + f"; the process ended {seconds - plan.get('finished', seconds):.1f} s after the job's clock")
    return results


def read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_figures(metrics: dict | None) -> dict:
    """The headline test figures of a ``metrics.json`` (each a number)."""
    if not metrics:
        return {}
    found = {}
    for name in ("accuracy", "macro_f1", "roc_auc", "covid_sensitivity", "covid_specificity"):
        value = metrics.get(name)
        value = value.get("value", value.get("point")) if isinstance(value, dict) else value
        if isinstance(value, (int, float)):
            found[name] = float(value)
    return found


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="labelled image folder or CSV manifest")
    parser.add_argument("--budget", default="5m", help="the --time-budget, e.g. 5m")
    parser.add_argument("--work", default="bench-runs/time-budget", help="output folder (emptied first)")
    parser.add_argument("--backbones", default="mobilenet_025")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unbudgeted", help="the unbudgeted default job's run directory, to compare test macro-F1")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
