"""Leakage audit: duplicate images, images under two labels, groups split across splits.

Exact duplicates share the sha256 of their file bytes. Near-duplicates (re-encoded,
resized, re-windowed or slightly cropped copies) are found with imagehash's
perceptual hash ``phash`` at ``hash_size=16`` (256 bits) and a Hamming threshold of
44 bits (``NEAR_DUPLICATE_THRESHOLD``).

Why 256 bits and 44: chest X-rays all look alike, so the default 64-bit phash puts
copies of one film and films of different people at the same distances. At 256 bits
there is a gap between the two, and 44 sits in it (the measured distances:
docs/leakage.md).

All-pairs distances use numpy popcount over 4 x 64-bit words in row blocks, so memory
stays bounded however many images there are.
"""

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from cxr_tuner.data import files, sources
from cxr_tuner.data.errors import DecodeFailure, UserError
from cxr_tuner.data.manifest import ignored_columns
from cxr_tuner.data.split import splits_of

HASH_SIZE = 16  # phash of a 16x16 DCT block: 256 bits
NEAR_DUPLICATE_THRESHOLD = 44
_DECODE_SIZE = 128  # phash shrinks to 64 px; 64, 128 and 224 px decodes give the same pairs
_BLOCK_ROWS = 256  # rows per distance block: 256 x 20,000 x 8 bytes = 40 MB
_CSV_COLUMNS = ("group", "path", "label", "split", "kind")


@dataclass(frozen=True)
class AuditReport:
    """What the leakage audit found.

    Attributes:
        n_images: Images audited.
        n_unhashed: Images that did not decode; only checked for exact copies.
        threshold: Hamming threshold (of 256 bits) used for near-duplicates.
        exact_duplicate_groups: Sets of two or more files with identical bytes.
        near_duplicate_groups: Duplicate clusters that are not just one set of identical files.
        cross_label_groups: Duplicate clusters whose images carry more than one label.
        cross_split_groups: Duplicate clusters spread over more than one split (0 without splits).
        cross_split_patients: Patients (non-empty groups) in more than one split.
        splits_checked: Whether a split was given, so the cross-split counts mean something.
        rows: One dict per image in a reported group, keys ``group,path,label,split,kind``.
    """

    n_images: int
    n_unhashed: int
    threshold: int
    exact_duplicate_groups: int
    near_duplicate_groups: int
    cross_label_groups: int
    cross_split_groups: int
    cross_split_patients: int
    splits_checked: bool
    rows: list = field(default_factory=list)

    def counts(self) -> dict:
        """The counts alone, e.g. to record in a run's config."""
        names = ("exact_duplicate_groups", "near_duplicate_groups", "cross_label_groups",
                 "cross_split_groups", "cross_split_patients")
        return {name: getattr(self, name) for name in names}


def duplicate_groups(paths, images=None, threshold: int = NEAR_DUPLICATE_THRESHOLD,
                     prints: tuple | None = None) -> list[str]:
    """A cluster id per image: exact and near-duplicates share one, others get their own.

    Args:
        paths: Image files (read for their sha256, and decoded when ``images`` is None).
        images: Optional decoded uint8 images in the same order, ``(N, s, s)`` or
            ``(N, s, s, 1)`` or a list (``None`` entries for images that did not decode),
            e.g. the decoded cache, so files are not decoded twice.
        threshold: Largest Hamming distance (of 256 bits) that counts as a near-duplicate.
        prints: :func:`fingerprints` of ``paths`` already computed (then nothing is read).

    Returns:
        One id per path such as ``"dup00017"`` (the index of the cluster's first image).
    """
    digests, hashes, hashed = prints or fingerprints(paths, images)
    roots = _cluster_roots(digests, hashes, hashed, threshold)
    return [f"dup{root:05d}" for root in roots]


def merge_groups(*groupings: Sequence[str]) -> list[str]:
    """Joins several groupings: items sharing a group in any of them end up together.

    Args:
        *groupings: Equal-length sequences of group ids (e.g. patient ids and
            `duplicate_groups`); ``""`` means no group. Ids of different groupings
            are unrelated, even when spelled the same.

    Returns:
        One id per item: the first non-empty id of its merged set (earliest grouping
        first), made unique with a ``#n`` suffix if another set already uses it;
        ``""`` for an item with no group anywhere.
    """
    sizes = {len(grouping) for grouping in groupings}
    if len(sizes) > 1:
        raise ValueError(f"groupings differ in length: {sorted(sizes)}")
    count = sizes.pop() if sizes else 0
    forest = _UnionFind(count)
    for grouping in groupings:
        for members in _members_by_id(grouping).values():
            forest.union_all(members)
    return _name_sets([forest.find(i) for i in range(count)], groupings)


def audit(
    examples, images=None, splits=None, threshold: int = NEAR_DUPLICATE_THRESHOLD, prints: tuple | None = None
) -> AuditReport:
    """Audits examples for duplicates, label conflicts and split leakage.

    Args:
        examples: `data.manifest.Example`s (``path``, ``label``, ``group``).
        images: Optional decoded images in the same order (see `duplicate_groups`).
        splits: Optional split name per example (e.g. from ``split.csv``); ``""`` for
            an example in no split, which is never counted as crossing splits.
        threshold: Near-duplicate Hamming threshold (of 256 bits).
        prints: :func:`fingerprints` of the examples' paths already computed.
    """
    examples = list(examples)
    digests, hashes, hashed = prints or fingerprints([e.path for e in examples], images)
    clusters = defaultdict(list)
    for index, root in enumerate(_cluster_roots(digests, hashes, hashed, threshold)):
        clusters[root].append(index)
    duplicates = [members for members in clusters.values() if len(members) > 1]
    split_of = list(splits) if splits is not None else [""] * len(examples)
    exact_sets = [m for m in _members_by_id([d or "" for d in digests]).values() if len(m) > 1]
    rows, flags = _duplicate_rows(duplicates, digests, examples, split_of)
    patients = _cross_split_patients(examples, split_of)
    rows += [_row(group, examples[i], split_of[i], "patient_cross_split")
             for group, members in patients.items() for i in members]
    return AuditReport(
        n_images=len(examples), n_unhashed=int((~hashed).sum()), threshold=threshold,
        exact_duplicate_groups=len(exact_sets),
        near_duplicate_groups=sum("near_duplicate" in f for f in flags),
        cross_label_groups=sum("cross_label" in f for f in flags),
        cross_split_groups=sum("cross_split" in f for f in flags),
        cross_split_patients=len(patients), splits_checked=splits is not None, rows=rows,
    )


def write_audit_csv(path, report: AuditReport) -> None:
    """Writes the report's rows as CSV with columns ``group,path,label,split,kind``.

    Raises:
        UserError: The file cannot be written (missing folder, no permission, full disk).
    """
    try:
        with files.replaced(path, newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=_CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(report.rows)
    except OSError as error:
        raise UserError(f"Cannot write the audit CSV {path} ({error.strerror}); "
                        "pass --out with a writable file path.") from error


def audit_collection(path, split_csv=None, out="audit.csv", log=print) -> AuditReport:
    """The ``data audit`` command: audits the collection at ``path`` and writes ``out``.

    After the leakage audit it prints the manifest's ignored columns and the source
    audit (`data.sources`).

    Args:
        path: A folder of labelled images or a CSV manifest.
        split_csv: A run's ``split.csv``: also count groups and patients across splits.
        out: The CSV of groups found.
        log: Where the summary lines go.
    """
    from cxr_tuner.data.labels import read  # a multi-label file too (its films' label sets are their labels here)

    table = read(path)
    for line in table.lines:
        log(line)
    examples = table.examples
    splits = None
    if split_csv is not None:
        splits = splits_of(examples, split_csv)
        log(f"{sum(bool(s) for s in splits)} of {len(examples)} images are in {split_csv}")
    report = audit(examples, splits=splits)
    for line in summary_lines(report):
        log(line)
    write_audit_csv(out, report)
    log(f"groups: {out}")
    if ignored_columns(path):
        log(f"ignored manifest columns: {', '.join(ignored_columns(path))}")
    for line in sources.summary_lines(sources.source_audit(examples)):
        log(line)
    return report


def summary_lines(report: AuditReport) -> list[str]:
    """Human-readable lines for the CLI to print."""
    split_note = "" if report.splits_checked else " (no split given)"
    counts = [
        ("exact duplicate groups", report.exact_duplicate_groups, ""),
        ("near-duplicate groups", report.near_duplicate_groups, ""),
        ("groups under two labels", report.cross_label_groups, ""),
        ("duplicate groups across splits", report.cross_split_groups, split_note),
        ("patients across splits", report.cross_split_patients, split_note),
        ("undecodable (exact check only)", report.n_unhashed, ""),
    ]
    header = (f"Leakage audit of {report.n_images} images (phash {HASH_SIZE * HASH_SIZE} bits, "
              f"near-duplicate at <= {report.threshold} bits):")
    return [header] + [f"  {name + ':':<32}{value}{note}" for name, value, note in counts]


def fingerprints(paths, images=None) -> tuple:
    """What the audit compares, per image: (sha256 or None, (N, 4) uint64 phash words,
    bool mask of images that hashed). ``images`` as in :func:`duplicate_groups`."""
    paths = list(paths)
    digests = [_sha256(path) for path in paths]
    hashes = np.zeros((len(paths), HASH_SIZE * HASH_SIZE // 64), dtype=np.uint64)
    hashed = np.zeros(len(paths), dtype=bool)
    for index, path in enumerate(paths):
        pixels = _decoded(path) if images is None else images[index]
        if pixels is not None:
            hashes[index], hashed[index] = _phash_words(np.asarray(pixels)), True
    return digests, hashes, hashed


def _sha256(path) -> str | None:
    try:
        return files.sha256_file(path)
    except OSError:
        return None  # unreadable: the decoder reports why; it simply has no exact copies


def _decoded(path) -> np.ndarray | None:
    from cxr_tuner.data.images import decode_image

    try:
        return decode_image(path, _DECODE_SIZE)
    except DecodeFailure:
        return None


def _phash_words(pixels: np.ndarray) -> np.ndarray:
    import imagehash

    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    bits = imagehash.phash(Image.fromarray(pixels.astype(np.uint8)), hash_size=HASH_SIZE).hash
    return np.packbits(bits.ravel()).view(">u8").astype(np.uint64)


def _cluster_roots(digests, hashes, hashed, threshold) -> list[int]:
    """Union-find over identical digests and near hashes; root = the set's smallest index."""
    forest = _UnionFind(len(digests))
    for members in _members_by_id([d or "" for d in digests]).values():
        forest.union_all(members)
    for first, second in _near_pairs(hashes, hashed, threshold):
        forest.union(first, second)
    return [forest.find(i) for i in range(len(digests))]


def _near_pairs(hashes, hashed, threshold):
    """Index pairs (i < j) of hashed images within ``threshold`` bits, block by block."""
    index = np.flatnonzero(hashed)
    words = hashes[index]
    for start in range(0, len(words), _BLOCK_ROWS):
        block = words[start:start + _BLOCK_ROWS]
        distance = np.zeros((len(block), len(words) - start), dtype=np.uint16)
        for column in range(words.shape[1]):
            distance += np.bitwise_count(block[:, None, column] ^ words[None, start:, column])
        rows, cols = np.nonzero(distance <= threshold)
        upper = cols > rows  # each pair once, never an image with itself
        yield from zip(index[start + rows[upper]], index[start + cols[upper]])


def _duplicate_rows(duplicates, digests, examples, split_of):
    rows, flags = [], []
    for members in duplicates:
        identical = digests[members[0]] and len({digests[i] for i in members}) == 1
        kinds = ["exact_duplicate" if identical else "near_duplicate"]
        if len({examples[i].label for i in members}) > 1:
            kinds.append("cross_label")
        if len({split_of[i] for i in members} - {""}) > 1:
            kinds.append("cross_split")
        flags.append(kinds)
        rows += [_row(f"dup{members[0]:05d}", examples[i], split_of[i], ";".join(kinds))
                 for i in members]
    return rows, flags


def _cross_split_patients(examples, split_of) -> dict[str, list[int]]:
    by_patient = _members_by_id([e.group for e in examples])
    # "" = in no split (e.g. skipped by the decoder): it cannot leak into another split.
    return {patient: members for patient, members in by_patient.items()
            if len({split_of[i] for i in members} - {""}) > 1}


def _row(group, example, split, kind) -> dict:
    return {"group": group, "path": example.path, "label": example.label, "split": split,
            "kind": kind}


def _members_by_id(ids) -> dict[str, list[int]]:
    """Item indices per non-empty id."""
    members = defaultdict(list)
    for index, value in enumerate(ids):
        if value:
            members[value].append(index)
    return members


def _name_sets(roots, groupings) -> list[str]:
    """Names each merged set after its first non-empty id, unique across sets."""
    names, used = {}, set()
    for grouping in groupings:
        for index, value in enumerate(grouping):
            if value and roots[index] not in names:
                name, suffix = value, 1
                while name in used:
                    suffix += 1
                    name = f"{value}#{suffix}"
                names[roots[index]] = name
                used.add(name)
    return [names.get(root, "") for root in roots]


class _UnionFind:
    """Disjoint sets over 0..n-1; the root of a set is its smallest member."""

    def __init__(self, count: int):
        self.parent = list(range(count))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]  # path halving
            item = self.parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        first, second = self.find(first), self.find(second)
        if first != second:
            self.parent[max(first, second)] = min(first, second)

    def union_all(self, members) -> None:
        for member in members[1:]:
            self.union(members[0], member)


def leak_groups(examples, images, prints: tuple | None = None) -> list[str]:
    """The groups the split keeps together: patients merged with (near-)duplicate images."""
    paths = [e.path for e in examples]
    duplicates = duplicate_groups(paths, prints=prints or fingerprints(paths, images))
    return merge_groups([e.group for e in examples], duplicates)
