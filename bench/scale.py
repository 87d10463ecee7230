"""How the cost of a search grows with the collection: 2,000, 20,000, 100,000 images.

    python bench/scale.py --sizes 2000,20000,100000 --search-up-to 20000 --audit-sizes 20000,100000 [--workers 2]

For each of ``--sizes`` it writes a synthetic collection of 224 px PNGs (phantoms of
``data.synthetic``, each shifted, re-exposed and noised so that no two files are equal)
and runs, in a fresh process per size: the decode (a cold decoded cache), the rest of
the data stage (fingerprints, grouped split, audit), the activation extraction
(mobilenet_025, ImageNet weights), a bare forward pass of the same backbone (the
floor), then a small Hyperband search (``--max-epochs``) on the cache; with
``--workers 2`` the same search again as 2 local workers on the same decoded images,
whose activations the chief and the workers extract together (the extraction's seconds
and shards per process, then the search's seconds without them). For each
of ``--audit-sizes`` it times the near-duplicate search alone on that many 256-bit
pHashes of such images. Prints one table with the growth from each size to the next.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_BASES = 240  # distinct phantoms; every image is a modified copy of one


def _variants(count: int, size: int = 224, seed: int = 0):
    """``count`` (label, uint8 image) pairs: a base phantom shifted, re-exposed and noised."""
    from cxr_tuner.data.synthetic import CLASS_NAMES, phantom

    rng = np.random.default_rng(seed)
    bases = [(CLASS_NAMES[i % 3], phantom(CLASS_NAMES[i % 3], np.random.default_rng([seed, i]), size)[0])
             for i in range(_BASES)]
    for i in range(count):
        label, base = bases[i % _BASES]
        shifted = np.roll(base, tuple(rng.integers(-12, 13, 2)), axis=(0, 1)).astype(np.float32)
        image = shifted * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20) + rng.normal(0, 6, base.shape)
        yield label, np.clip(image, 0, 255).astype(np.uint8)


def write_collection(root: Path, count: int) -> Path:
    """A folder per class of ``count`` PNGs plus ``metadata.csv`` (reused when complete)."""
    from PIL import Image

    done = root / "complete"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rows = []
    for i, (label, image) in enumerate(_variants(count)):
        relative = f"{label}/{i:06d}.png"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / relative, compress_level=1)
        rows.append((relative, label, f"P{i // 2:06d}"))
    with open(root / "metadata.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "patient_id"), *rows])
    done.write_text("")
    return root


def _anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_size(data: str, run_dir: str, max_epochs: int, workers: int, search: bool = True) -> dict:
    """The stages of one collection, in this process; returns their figures (without the searches: not ``search``)."""
    import resource

    import tensorflow as tf

    from cxr_tuner.data import cache as decoded_cache, manifest
    from cxr_tuner.search.engine import dataset
    from cxr_tuner.search.engine.config import new_config
    from cxr_tuner.search.tuning.activations import trial_hypermodel
    from cxr_tuner.search.run import run_search
    from cxr_tuner.search.tuning.tuner import make_tuner

    shutil.rmtree(run_dir, ignore_errors=True)
    config = new_config(run_dir, data, backbones=("mobilenet_025",), image_size=224, weights="imagenet",
                        max_epochs=max_epochs, factor=3, seed=0)
    out, start = {}, time.perf_counter()
    examples = manifest.discover(Path(data))
    decoded_cache.load_decoded(examples, 224, config.path / "cache", progress=False)
    out["decode_s"] = time.perf_counter() - start
    data_ = dataset.prepare(config, progress=False)
    out["data_stage_s"] = time.perf_counter() - start
    config = data_.config
    config.save()
    hypermodel, cache = trial_hypermodel(data_, progress=False)
    start = time.perf_counter()
    cache.warm(config.backbones)
    out["extraction_s"] = time.perf_counter() - start
    out["cache_mb"] = sum(p.stat().st_size for p in cache.folder.rglob("*.f32")) / 1e6
    model = cache.image_model("mobilenet_025")
    pooled = tf.keras.Model(model.input, model.get_layer("avg_pool").output) \
        if any(layer.name == "avg_pool" for layer in model.layers) else model
    start = time.perf_counter()
    for first in range(0, len(data_.images), 64):
        pooled.predict_on_batch(np.asarray(data_.images[first:first + 64]))
    out["forward_pass_s"] = time.perf_counter() - start
    out["anon_before_trials_mb"] = _anon_mb()
    if not search:
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    start = time.perf_counter()
    make_tuner(config, hypermodel, None).search(epochs=config.max_epochs, verbose=0)
    out["search_s"] = time.perf_counter() - start
    memory = [line.split(",") for line in config.layout.memory.read_text().splitlines() if line]
    anon = [float(row[3]) for row in memory]
    out.update(trials=len(memory), trial_anon_first_mb=anon[0], trial_anon_last_mb=anon[-1],
               trial_anon_max_mb=max(anon), peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if workers > 1:
        # The same search as local workers, on the decoded images just written: the chief and
        # the workers extract the activations together (sharded), then search.
        other = Path(run_dir + f"-w{workers}")
        shutil.rmtree(other, ignore_errors=True)
        (other / "cache").mkdir(parents=True)
        os.symlink(config.path / "cache" / "decoded-224", other / "cache" / "decoded-224")
        lines = []
        start = time.perf_counter()
        run_search(config.replace(run_dir=str(other)), log=lines.append, workers=workers)
        total = time.perf_counter() - start
        said = next(line for line in lines if line.startswith("activations of mobilenet_025: "))
        seconds, shards = re.fullmatch(r"activations of mobilenet_025: ([\d.]+) s \(shards: (.*)\)", said).groups()
        out[f"extraction_w{workers}_s"] = float(seconds)
        out[f"extraction_w{workers}_shards"] = shards
        out[f"search_w{workers}_s"] = total - float(seconds)
    return out


def audit_time(count: int) -> dict:
    """Seconds to pHash ``count`` images (measured on up to 2,000, per image) and to find their near pairs."""
    from cxr_tuner.data import audit

    sample = min(count, 2000)
    images = list(_variants(sample, seed=1))
    start = time.perf_counter()
    hashes = np.stack([audit._phash_words(image) for _, image in images])
    per_image = (time.perf_counter() - start) / sample
    words = hashes[np.random.default_rng(0).integers(0, sample, count)]
    # Copies of one hash would all be pairs; flip a few random bits so each is its own
    # image near its base (the cost is the same all-pairs comparison either way).
    flips = np.random.default_rng(1).integers(0, 64, (count, 4, 3))
    for k in range(3):
        words ^= np.left_shift(np.uint64(1), flips[:, :, k].astype(np.uint64))
    start = time.perf_counter()
    pairs = sum(1 for _ in audit._near_pairs(words, np.ones(count, bool), audit.NEAR_DUPLICATE_THRESHOLD))
    return {"phash_per_image_ms": per_image * 1e3, "near_pairs_s": time.perf_counter() - start, "pairs": pairs}


def _growth(rows: list[dict], key: str) -> str:
    values = [row.get(key) for row in rows]
    cells = [f"{v:,.1f}" if isinstance(v, float) else "-" if v is None else str(v) for v in values]
    growth = [f"x{b / a:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-"
              for a, b in zip(values, values[1:])]
    return " | ".join(cells + growth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--audit-sizes", default="20000,100000")
    parser.add_argument("--work", default="/tmp/bench-scale")
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--search-up-to", type=int, default=None,
                        help="run the searches only on collections of at most N images (the data stage and "
                             "the extraction on every size)")
    parser.add_argument("--no-search", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=2, metavar=("DATA", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(*args.one, args.max_epochs, args.workers, search=not args.no_search)))
        return
    work = Path(args.work)
    rows = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        start = time.perf_counter()
        data = write_collection(work / f"data-{size}", size)
        print(f"[{time.strftime('%H:%M:%S')}] {size} images written in {time.perf_counter() - start:.0f} s",
              flush=True)
        result = subprocess.run([sys.executable, __file__, "--one", str(data), str(work / f"run-{size}"),
                                 "--max-epochs", str(args.max_epochs), "--workers", str(args.workers),
                                 *(["--no-search"] if args.search_up_to is not None and size > args.search_up_to
                                   else [])],
                                cwd=REPO, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(result.stderr[-3000:])
        rows.append({"images": size, **json.loads(result.stdout.strip().splitlines()[-1])})
        print(json.dumps(rows[-1]), flush=True)
    audits = [{"images": n, **audit_time(n)} for n in [int(s) for s in args.audit_sizes.split(",") if s]]
    (work / "results.json").write_text(json.dumps({"sizes": rows, "audit": audits}, indent=2) + "\n")
    if rows:
        sizes = [str(row["images"]) for row in rows]
        print("| figure | " + " | ".join(sizes) + " | " + " | ".join(
            f"{a} -> {b}" for a, b in zip(sizes, sizes[1:])) + " |")
        print("| --- |" + " ---: |" * (2 * len(sizes) - 1))
        keys = ["decode_s", "data_stage_s", "extraction_s", "forward_pass_s", "search_s", "trials",
                "anon_before_trials_mb", "trial_anon_first_mb", "trial_anon_last_mb", "trial_anon_max_mb",
                "peak_rss_mb", "cache_mb"] + ([f"extraction_w{args.workers}_s", f"extraction_w{args.workers}_shards",
                                               f"search_w{args.workers}_s"] if args.workers > 1 else [])
        for key in keys:
            print(f"| {key} | {_growth(rows, key)} |")
    if audits:
        sizes = [str(a["images"]) for a in audits]
        print("| near-duplicate search | " + " | ".join(sizes) + " | " + " | ".join(
            f"{a} -> {b}" for a, b in zip(sizes, sizes[1:])) + " |")
        print("| --- |" + " ---: |" * (2 * len(sizes) - 1))
        for key in ("phash_per_image_ms", "near_pairs_s", "pairs"):
            print(f"| {key} | {_growth(audits, key)} |")


if __name__ == "__main__":
    main()
