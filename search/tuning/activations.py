"""Activation cache: the frozen part of each backbone runs once over the run's images.

Layout: ``RUN_DIR/cache/activations/<backbone>-<size>px-w<weights>-i<images>/`` holds one
raw float32 array per cut layer (``<cut>.f32``, one row per image of the decoded cache)
and its ``<cut>.json`` (shape, dtype and the key); with ``dtype="float16"`` the entry's
folder ends in ``-f16`` and its arrays are ``<cut>.f16`` (half the disk, see
:mod:`search.tuning.cache_plan`); an entry computed under a mixed precision policy ends in
``-mixed_bfloat16`` or ``-mixed_float16``, so no run of another precision reads it, and one
whose films are standardised inside the model ends in ``-standardize``.
``<weights>`` is the start of the sha256 of the weights file (``none`` for random
weights), ``<images>`` the start of the sha256 of the decoded pixels: other weights,
another size or other images are another entry, and a cut is its own file. An array is
written under a temporary name and renamed, and its ``.json`` comes last, so an interrupted extraction leaves no entry.

Cost: all missing cuts of a backbone come out of one forward pass, starting from the
deepest cut already cached when there is one (deriving shallower cuts is a fraction of
a pass), so extraction is about one forward pass per backbone and image size. Processes
that need the same pass at once (a distributed search's chief and workers) share it
out in shards (:mod:`search.tuning.extraction`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from cxr_tuner.data import files, pipeline, shift
from cxr_tuner.hypermodels.cutting import ActivationClassifier, cut_layer, frozen_image_model, frozen_model, is_cacheable
from cxr_tuner.hypermodels.classifier import POOLED, XrayClassifier
from cxr_tuner.hypermodels.backbones.spec import BackboneSpec, file_safe
from cxr_tuner.hypermodels.weights import keras_cache_dir, resolve_weights
from cxr_tuner.search.tuning import cache_plan, extraction
from cxr_tuner.search.engine.dataset import FIT
from cxr_tuner.search.engine.task import task_of

CACHE_DTYPES = ("float32", "float16")
_BATCH = 64
_SUFFIX = extraction.SUFFIX


class ActivationCache:
    """Cached activations of the frozen backbones of one run, computed on first use.

    Args:
        classifier: The image model (backbones, weights, image size).
        images: The run's decoded uint8 images ``(N, S, S, 1)``, usually the memmap.
        folder: Where entries live, normally ``RUN_DIR/cache/activations``.
        progress: Show a progress bar (counts and rate) while extracting.
        dtype: ``"float32"`` (exact) or ``"float16"`` (half the disk); trials read float32.
        depths: Per backbone, how many unfreeze depths (0, 1, ...) are cached; the
            others train on images (a size budget, :func:`search.tuning.cache_plan.plan_cache`).
            None: every depth.
        extractor: This process's name in the shards it extracts (default ``HOST-PID``).
        log: Where lines about shards taken over from dead processes go.
    """

    def __init__(self, classifier: XrayClassifier, images: np.ndarray, folder: str | Path,
                 progress: bool = True, dtype: str = "float32", depths: dict[str, int] | None = None,
                 extractor: str | None = None, log: Callable[[str], None] | None = print):
        self.classifier = classifier
        self.images = images
        self.folder = Path(folder)
        self.progress = progress
        self.dtype = dtype
        self.depths = depths
        self.extractor = extractor or extraction.process_name()
        self.log = log
        self.plan = None  # the search.tuning.cache_plan.CachePlan it was sized by, when one was made
        self.copies = None  # the cache of the run's re-rendered training copies, warmed with this one
        self._images_id = None
        self._keys = {}  # hashing is not free: once per backbone and run
        self._models = {}

    def key(self, backbone: str) -> dict:
        """What ``backbone``'s activations depend on: backbone, size, weights, images, precision and intensity step."""
        if backbone not in self._keys:
            if self._images_id is None:
                self._images_id = images_identity(self.images)
            size = self.classifier.image_size
            self._keys[backbone] = {"backbone": backbone, "image_size": size, "images": self._images_id,
                                    "weights": weights_identity(self.spec(backbone), self.classifier.weights, size),
                                    "precision": self.classifier.precision,
                                    "intensity": self.classifier.intensity}
        return self._keys[backbone]

    def entry(self, backbone: str) -> Path:
        """The folder of ``backbone``'s activations for these weights, size, images and precision."""
        key = self.key(backbone)
        suffix = "" if self.dtype == "float32" else f"-{_SUFFIX[self.dtype]}"
        computed = "" if key["precision"] == "float32" else f"-{key['precision']}"
        computed += "" if key["intensity"] == "as_stored" else f"-{key['intensity']}"
        return self.folder / (f"{file_safe(backbone)}-{key['image_size']}px-w{key['weights'][:16]}"
                              f"-i{key['images'][:16]}{suffix}{computed}")

    def spec(self, backbone: str) -> BackboneSpec:
        """``backbone``'s spec among the run's backbones (the classifier's)."""
        return self.classifier.specs.get(backbone)

    def is_cached(self, backbone: str, depth: int) -> bool:
        """Whether trials of ``backbone`` at ``depth`` train on cached activations (else on images)."""
        return is_cacheable(self.spec(backbone), self.classifier.weights) and (
            self.depths is None or depth < self.depths.get(backbone, 0))

    def cached_cuts(self, backbone: str) -> list[str]:
        """The cut layers of ``backbone`` this cache holds, depth 0 first."""
        spec = self.spec(backbone)
        return [cut_layer(spec, d) for d in range(len(spec.unfreeze_points) + 1) if self.is_cached(backbone, d)]

    def activations(self, backbone: str, depth: int) -> np.ndarray:
        """Read-only activations (of the cache's dtype) at the freeze boundary of ``depth``, a row per image.

        Computes (and caches) every cut of the backbone that is still missing, in
        one pass, when the requested one is missing.
        """
        spec = self.spec(backbone)
        entry = self.entry(backbone)
        cuts = self.cached_cuts(backbone)
        if cut_layer(spec, depth) not in cuts:
            raise ValueError(f"{backbone} at unfreeze depth {depth} is not cached: it trains on images")
        if _read(entry, cut_layer(spec, depth)) is None:
            self._extract(backbone, entry, [c for c in cuts if _read(entry, c) is None])
        return _read(entry, cut_layer(spec, depth))

    def warm(self, backbones) -> None:
        """Computes now every cut of each of ``backbones`` that a trial could ask for.

        A distributed search's chief and its workers do, before the chief serves, sharing
        out the passes, so that trials only read.
        Backbones without a frozen part (trained from scratch) have nothing to cache.
        """
        for backbone in backbones:
            if is_cacheable(self.spec(backbone), self.classifier.weights):
                # The first call extracts every missing cut in one pass; the rest read.
                for depth in range(len(self.spec(backbone).unfreeze_points) + 1):
                    if self.is_cached(backbone, depth):
                        self.activations(backbone, depth)
        if self.copies is not None:
            self.copies.warm(backbones)

    def image_model(self, backbone: str):
        """The :func:`frozen_image_model` of ``backbone``, built once; the trials' template too."""
        if backbone not in self._models:
            self._models[backbone] = frozen_image_model(self.classifier, backbone)
        return self._models[backbone]

    def _extract(self, backbone: str, entry: Path, cuts: list[str]) -> None:
        """Fills the missing ones of ``cuts``, sharing each pass with any other process that needs it."""
        model = self.image_model(backbone)
        while True:
            job, segment = extraction.read_job(entry), None
            if job is None:
                missing = [c for c in cuts if _read(entry, c) is None]
                if not missing:
                    return
                source = _source(entry, self.spec(backbone), missing)
                segment = frozen_model(model, source, missing)
                shapes = [(len(self.images), *output.shape[1:]) for output in segment.outputs]
                job = extraction.open_job(entry, missing, source, shapes, self.dtype, _BATCH)
                if job is None:
                    continue
                if (job.source, job.cuts) != (source, tuple(missing)):
                    segment = None  # another process's pass began first: join it
            if segment is None:
                segment = frozen_model(model, job.source, list(job.cuts))
            inputs = self.images if job.source is None else _read(entry, job.source)
            extraction.run(job, entry, segment, inputs, self.key(backbone),
                           self.progress and f"activations {backbone} from {job.source or 'images'}",
                           self.extractor, self.log)

    def extraction_record(self, backbone: str) -> dict | None:
        """How ``backbone``'s deepest cached cut was extracted: seconds and shards per process."""
        cuts = self.cached_cuts(backbone)
        meta = self.entry(backbone) / f"{cuts[-1]}.json" if cuts else None
        return json.loads(meta.read_text()).get("extraction") if meta and meta.is_file() else None


def _source(entry: Path, spec: BackboneSpec, missing: list[str]) -> str | None:
    """The nearest cached cut below every missing one: the cheapest exact source (else the images)."""
    order = [POOLED, *spec.unfreeze_points]
    below = [c for c in order[max(order.index(m) for m in missing) + 1:] if _read(entry, c) is not None]
    return below[0] if below else None


def weights_identity(spec: BackboneSpec, weights: str, size: int) -> str:
    """``"none"`` for random weights, else the sha256 of the weights file the backbone loads."""
    resolved = resolve_weights(spec, weights, size)
    if resolved is None:
        return "none"
    path = keras_cache_dir() / spec.weight_file(size) if resolved == "imagenet" else Path(resolved)
    return files.sha256_file(path)


def images_identity(images: np.ndarray) -> str:
    """sha256 of the decoded pixels (and their shape): same images, same activations."""
    digest = hashlib.sha256(repr(images.shape).encode())
    flat = images.reshape(len(images), -1)
    for start in range(0, len(flat), 1024):
        digest.update(np.ascontiguousarray(flat[start:start + 1024]).data)
    return digest.hexdigest()


def _read(entry: Path, cut: str) -> np.ndarray | None:
    meta = entry / f"{cut}.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    dtype = info.get("dtype", "float32")
    return np.memmap(entry / f"{cut}.{_SUFFIX[dtype]}", dtype=dtype, mode="r", shape=tuple(info["shape"]))


class TrialData:
    """The ``(train, validation)`` data a trial fits on.

    Callable as ``(backbone, depth, initial_epoch, fold)``: cached activations at the
    freeze boundary of ``depth``, or images for ``depth=None`` (backbones trained
    whole); the train and val splits, or with ``fold`` the rows of that fold of
    train+val (:meth:`RunData.folds`), or with ``fold=FIT`` all of train+val and no
    validation. Each call gets a fresh training pipeline whose shuffle orders follow
    from the run's seed and ``initial_epoch`` alone: a trial sees the same batches
    whatever ran before it in this process (a pipeline kept across trials would
    continue its sequence of orders), so it does not matter which worker of a
    distributed search runs it, or whether a search was resumed. Validation is not
    shuffled.
    """

    def __init__(self, data, cache: ActivationCache, copies: shift.StoredCopies | None = None):
        self.data = data
        self.cache = cache
        self.copies = copies  # train+val films re-rendered (config.shift_copies), their activations in cache.copies
        self._validation = {}
        self._activations = {}  # one memory map per cut and process: each map's pages count in its RSS

    def __call__(self, backbone: str, depth: int | None, initial_epoch: int = 0, fold=None, clean: bool = False) -> tuple:
        key = ("images",) if depth is None else (backbone, depth)
        seed = shuffle_seed(self.data.config.seed, initial_epoch)
        if fold == FIT:
            return self._make(backbone, depth, FIT, seed), None
        # A split by name, a fold by its rows.
        train, val = ("train", "val") if fold is None else self.data.folds()[fold]
        if (key, fold, clean) not in self._validation:
            self._validation[key, fold, clean] = self._make(backbone, depth, val, clean=clean)
        return self._make(backbone, depth, train, seed), self._validation[key, fold, clean]

    def _make(self, backbone: str, depth: int | None, which, seed: int | None = None, clean: bool = False):
        """The pipeline of split ``which`` (a name) or of the rows ``which``; shuffled (training) with ``seed`` when given.

        With training copies, a training epoch shows each film once, as itself or as one of
        its copies; validation with ``shift_objective="mixed"`` holds the films and the first
        copy of each, alike in weight: the mean of the clean and the shifted loss (``clean``: the films alone).
        """
        shuffle = seed is not None
        config = self.data.config
        rows = self.data.indices(which) if isinstance(which, str) else which
        labels, weights, picked = self.data.labels[rows], self.data.sample_weights(rows), rows
        if self.copies is not None:
            variants = self.copies.variants(rows, len(self.data.images))
            if shuffle:
                picked = variants
            elif config.shift_objective == "mixed" and not clean:
                # Each film and its first copy, alike in weight: one copy per film halves what
                # validating on every copy would add to each epoch.
                picked = np.concatenate([rows, variants[:, 1]])
                labels, weights = np.concatenate([labels, labels]), np.concatenate([weights, weights])
        # Images and activations go through the same pipeline: a trial on activations sees the batches its image model would.
        return pipeline.make_dataset(self._source(backbone, depth), labels, weights, len(config.class_names),
                                     config.batch_size, shuffle=shuffle, seed=seed or 0, rows=picked)

    def _source(self, backbone: str, depth: int | None):
        """The rows a pipeline reads: images (``depth=None``) or activations, the copies' after the films'."""
        if (backbone, depth) not in self._activations:
            if depth is None:
                films, copies = self.data.images, self.copies and self.copies.images
            else:
                films = self.cache.activations(backbone, depth)
                copies = self.copies and self.cache.copies.activations(backbone, depth)
            self._activations[backbone, depth] = films if copies is None else pipeline.Stacked(films, copies)
        return self._activations[backbone, depth]


def shuffle_seed(seed: int, initial_epoch: int) -> int:
    """The shuffle seed of a fit starting at ``initial_epoch``: the run's ``seed`` for a fresh one."""
    if not initial_epoch:
        return seed
    return int(np.random.SeedSequence([seed, initial_epoch]).generate_state(1)[0] >> 1)


def trial_hypermodel(data, progress: bool = True):
    """The search's hypermodel for ``data`` and the activation cache it trains on."""
    config = data.config
    classifier = XrayClassifier(len(config.class_names), config.image_size, config.backbones, config.weights,
                                config.precision, config.search_space(), findings=task_of(config).findings(config),
                                specs=config.backbone_specs, intensity=config.intensity)
    # Trials of pretrained backbones train only what is above the freeze boundary,
    # on activations computed once; the hypermodel's fit picks each trial's data.
    cache = ActivationCache(classifier, data.images, config.layout.activations, progress,
                            dtype=config.cache_dtype)
    # Decided from config.json alone, so the chief and every worker of a run agree on it.
    shapes = functools.partial(cache_plan.cut_shapes, cache.image_model, specs=config.backbone_specs)
    cache.plan = cache_plan.plan_cache(lambda backbone: shapes(backbone)[:searched_depths(config, backbone)],
                                       config.backbones, config.weights, len(cache.images),
                                       config.cache_dtype, config.cache_budget_gb, specs=config.backbone_specs)
    cache.depths = cache.plan.depths
    copies = None
    if config.shift_copies:
        copies = shift.stored_copies(data.images, data.indices(FIT), config.shift_copies, config.seed,
                                     config.layout.cache / "shift")
        cache.copies = ActivationCache(classifier, copies.images, config.layout.activations, progress,
                                       dtype=config.cache_dtype, depths=cache.depths)
        cache.copies._models = cache._models  # one frozen backbone per process serves both
    return ActivationClassifier(classifier, TrialData(data, cache, copies), cache.image_model,
                                   cached=cache.is_cached), cache


def searched_depths(config, backbone: str) -> int:
    """How many unfreeze depths (0, 1, ...) of ``backbone`` a trial or a retrain of the run's space can ask for:
    the space's deepest, one more where the retrain may try one block more, at most every cut."""
    cuts = len(config.backbone_specs.get(backbone).unfreeze_points)
    deepest = config.search_space().unfreeze_entry(cuts).highest()
    extra = 1 if "one_block_more" in config.retrain_choices["variants"] else 0
    return min(cuts, int(deepest) + extra) + 1
