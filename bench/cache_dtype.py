"""Trial scores on a float16 activation cache (or in bfloat16) against the same search in float32.

    python bench/cache_dtype.py --data ../shared/data/cxr3-dev --limit 500 \\
        --backbones mobilenet_025 --weights imagenet --image-size 224 --max-epochs 9 \\
        [--compare precision]

Runs ``cli.py search --no-retrain`` once per ``--cache-dtype`` (float32, float16) or, with
``--compare precision``, per ``--precision`` (float32, mixed_bfloat16), each in its own
process and run directory, same split and seed; matches trials by their hyperparameters
and prints each pair of scores, the largest difference, the rank correlation, whether
the best configuration is the same, and each search's time and cache size on disk.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from scipy.stats import spearmanr

from run import limited_copy, run_step

COMPARED = {"cache-dtype": ("float32", "float16"), "precision": ("float32", "mixed_bfloat16")}


def trial_scores(run_dir: Path) -> dict:
    """``{hyperparameters as JSON: score}`` of every finished trial of a run."""
    scores = {}
    for path in sorted((run_dir / "tuner").glob("trial_*/trial.json")):
        trial = json.loads(path.read_text())
        if trial.get("score") is not None:
            values = trial["hyperparameters"]["values"]
            scores[json.dumps(values, sort_keys=True)] = trial["score"]
    return scores


def cache_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in (run_dir / "cache" / "activations").rglob("*")
               if p.suffix in (".f32", ".f16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", default="/tmp/bench-cache-dtype")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--backbones", default="mobilenet_025")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", default="224")
    parser.add_argument("--max-epochs", default="9")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", choices=sorted(COMPARED), default="cache-dtype")
    args = parser.parse_args()
    reference, other = values = COMPARED[args.compare]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = limited_copy(args.data, args.limit, args.seed, work / "data") if args.limit else args.data
    results = {}
    for dtype in values:
        run_dir = work / dtype
        step = run_step(f"search {dtype}", [
            sys.executable, "cli.py", "search", "--data", data, "--run-dir", str(run_dir), "--overwrite",
            "--backbones", args.backbones, "--weights", args.weights, "--image-size", args.image_size,
            "--max-epochs", args.max_epochs, "--seed", str(args.seed), "--no-retrain", f"--{args.compare}", dtype,
        ], work / f"{dtype}.log")
        results[dtype] = {"seconds": step["seconds"], "scores": trial_scores(run_dir),
                          "cache_bytes": cache_bytes(run_dir)}
    exact, half = results[reference]["scores"], results[other]["scores"]
    common = [key for key in exact if key in half]
    print(f"{reference:>10} {other:>10} {'diff':>9}  hyperparameters")
    for key in common:
        print(f"{exact[key]:10.5f} {half[key]:10.5f} {half[key] - exact[key]:+9.5f}  {key}")
    diffs = [abs(half[k] - exact[k]) for k in common]
    relative = [abs(half[k] - exact[k]) / abs(exact[k]) for k in common if exact[k]]
    print(f"trials: {reference} {len(exact)}, {other} {len(half)}, same hyperparameters {len(common)}")
    if diffs:
        print(f"score difference: max {max(diffs):.5f}, mean {sum(diffs) / len(diffs):.5f}, "
              f"max relative {max(relative):.4f}; identical {sum(d == 0 for d in diffs)} of {len(diffs)}")
    if len(common) > 2:
        rho = spearmanr([exact[k] for k in common], [half[k] for k in common]).statistic
        print(f"Spearman rank correlation of the {len(common)} trial scores: {rho:.3f}")
    best = {d: min(results[d]["scores"], key=results[d]["scores"].get) for d in values}
    print(f"best configuration the same: {best[reference] == best[other]} "
          f"({reference} {exact[best[reference]]:.5f}, {other} {half[best[other]]:.5f})")
    for dtype in values:
        print(f"{dtype}: search {results[dtype]['seconds']:.0f} s, activation cache "
              f"{results[dtype]['cache_bytes'] / 1e6:.1f} MB on disk")
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
