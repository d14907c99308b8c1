"""The "realistic" style of the synthetic chest X-ray sets: the `difficulty` knob, case sampling (graded and
overlapping findings, subtle cases, label noise) and reader scan paths; the radiographs are drawn by
`gazejax.data.synthetic.cxr_anatomy`.

`difficulty` d in [0, 1] sets every field of `Difficulty` by linear interpolation between its d = 0 and d = 1
values (`difficulty_params(d)`; an explicit `label_noise` overrides that field):

    field         d = 0   d = 1   what it scales
    severity      2.00    0.55    multiplier on each finding's drawn severity (lower = fainter findings)
    subtle_share  0.00    0.40    share of findings drawn near the noise floor (severity 0.04-0.15)
    noise         0.30    1.60    multiplier on quantum + detector noise
    overlap       0.10    1.50    multiplier on the cross-class finding probabilities (`_CROSS`)
    label_noise   0.00    0.10    share of images whose class label is flipped to another class

Severity is continuous in (0, 1] per finding. Classes: Normal (no finding), CHF (cardiomegaly + edema, often
effusion), pneumonia (consolidation; sometimes effusion, mild edema, atelectasis or a large heart). A flipped image is
labelled as a typical case of the other class (class columns and finding labels alike, as a report filed with the
wrong image); the truth file keeps the true class and findings.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from gazejax.data.synthetic import cxr_phantom

VERSION = 2  # bump whenever the drawing changes: cached realistic sets record it and are rebuilt on a mismatch
_EASY = {"severity": 2.00, "subtle_share": 0.0, "noise": 0.3, "overlap": 0.1, "label_noise": 0.0}
_HARD = {"severity": 0.55, "subtle_share": 0.4, "noise": 1.6, "overlap": 1.5, "label_noise": 0.1}
# class -> finding -> (probability at overlap 1, severity factor); the class's defining findings are always present
_CORE = {0: (), 1: ("cardiomegaly", "edema"), 2: ("consolidation",)}
_CROSS = {1: {"effusion": (0.5, 1.0), "atelectasis": (0.15, 0.7)},
          2: {"effusion": (0.25, 0.8), "edema": (0.2, 0.35), "atelectasis": (0.25, 0.8), "cardiomegaly": (0.1, 0.5)}}


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """Generator parameters one `difficulty` value maps to (table in the module docstring)."""

    severity: float
    subtle_share: float
    noise: float
    overlap: float
    label_noise: float


def difficulty_params(difficulty: float = 0.5, label_noise: float | None = None) -> Difficulty:
    """The `Difficulty` of a knob value in [0, 1]; `label_noise` (in [0, 1)), when given, replaces its own."""
    d = float(difficulty)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    values = {k: _EASY[k] + d * (_HARD[k] - _EASY[k]) for k in _EASY}
    if label_noise is not None:
        if not 0.0 <= float(label_noise) < 1.0:
            raise ValueError(f"label_noise must be in [0, 1), got {label_noise!r}")
        values["label_noise"] = float(label_noise)
    return Difficulty(**values)


STYLES = ("basic", "realistic")


def style_params(style: str = "basic", difficulty: float = 0.5, label_noise: float | None = None) -> dict:
    """Validated style arguments as a generator records them: {} for "basic" (difficulty ignored there)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if style == "basic":
        if label_noise is not None:
            raise ValueError(f"label_noise applies to style='realistic' only, got {label_noise!r} with style='basic'")
        return {}
    difficulty_params(difficulty, label_noise)
    return {"style": style, "difficulty": float(difficulty),
            "label_noise": None if label_noise is None else float(label_noise)}


def _severity(rng, params: Difficulty, factor: float) -> float:
    if rng.random() < params.subtle_share:
        return float(rng.uniform(0.04, 0.15))
    return float(np.clip(rng.uniform(0.3, 1.0) * params.severity * factor, 0.05, 1.0))


def _flips(images: int, seed: int, rate: float) -> dict[int, int]:
    """Exactly round(rate * images) images, each -> another class (index -> shift 1 or 2)."""
    rng = np.random.default_rng([seed, 17])
    chosen = rng.permutation(images)[:int(round(rate * images))]
    return {int(i): int(rng.integers(1, 3)) for i in sorted(chosen)}


def sample_cases(images: int, seed: int, params: Difficulty) -> list[dict]:
    """`cxr_phantom.sample_cases` (classes, patients, ids, per-image rng) with realistic findings: per image also
    severity {finding: s}, label / label_findings (what the files say) and flipped."""
    cases = cxr_phantom.sample_cases(images, seed)
    flips = _flips(images, seed, params.label_noise)
    for i, case in enumerate(cases):
        rng, c = case["rng"], case["class"]
        severity = {f: _severity(rng, params, 1.0) for f in _CORE[c]}
        for f, (p, factor) in _CROSS.get(c, {}).items():
            if rng.random() < min(0.95, p * params.overlap):
                severity[f] = _severity(rng, params, factor)
        label = (c + flips[i]) % 3 if i in flips else c
        case.update(findings=sorted(severity), severity=severity, label=label, flipped=i in flips, seed=int(seed),
                    label_findings=sorted(_CORE[label]) if i in flips else sorted(severity), params=params)
    return cases


_ORDER = ("mediastinum", "right upper", "right mid", "right lower", "right angle", "heart", "left upper",
          "left mid", "left lower", "left angle")  # a systematic search: mediastinum, right lung, heart, left lung


def _visits(regions: dict, severity: dict, rng, focus: float) -> list[tuple[str, int, float]]:
    """(region, fixations, mean dwell s) in viewing order: the anatomy tour (shuffled for novices), detected
    findings dwelt on during the tour and revisited at the end."""
    tour = [k for k in _ORDER if k in regions]
    if focus < 0.7:
        tour = [tour[i] for i in rng.permutation(len(tour))]
    visits, revisits = [(k, int(rng.integers(1, 3)), 0.22) for k in tour], []
    threshold = 0.08 + 0.3 * (1.0 - focus)  # severity at which a finding is seen half the time
    for f, s in severity.items():
        if f not in regions or rng.random() > 1.0 / (1.0 + np.exp(-(s - threshold) / 0.04)):
            continue
        dwell = 0.35 + 0.35 * focus
        visits.insert(int(rng.integers(0, len(visits) + 1)), (f, int(rng.integers(2, 4)), dwell))
        revisits.append((f, int(round(rng.integers(2, 5) * focus)) or 1, dwell))
    return visits + revisits


def scanpath(regions: dict, severity: dict, size: tuple[int, int], rng, focus: float = 1.0):
    """Fixations (points float [N, 2] x, y px; durations [N] s) in temporal order: a first fixation near the
    centre, saccades between anatomy regions, several longer fixations on each detected finding (subtle ones can
    be missed, more often by a reader with focus < 1, who also scatters fixations over the image)."""
    (h, w), spread = size, 1.0 + 1.5 * (1.0 - focus)
    pts, dur = [np.array([w, h]) * (0.5 + rng.normal(0, 0.03, 2))], [0.2]
    for key, n, dwell in _visits(regions, severity, rng, focus):
        x, y, sx, sy = regions[key]
        centre = np.array([x, y]) + rng.normal(0, 1, 2) * [sx, sy] * 0.5
        pts += list(centre + rng.normal(0, 1, (n, 2)) * [sx, sy] * spread)
        dur += list(rng.gamma(4.0, dwell / 4.0, n))
        if rng.random() < 1.0 - focus:  # a novice's stray look somewhere else
            pts.append(rng.uniform(0.08, 0.92, 2) * [w, h])
            dur.append(float(rng.gamma(4.0, 0.04)))
    pts = np.clip(np.array(pts, float), 1.0, [w - 2.0, h - 2.0])
    return pts, np.maximum(np.array(dur, float), 0.08)
