"""Phantom chest radiographs for the synthetic EGD-CXR / REFLACX sets: anatomy, findings and reader scan paths.

Split from `gazejax.data.synthetic.cxr` (which writes the data-set layouts); numpy only, deterministic per rng.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

CLASSES = ("Normal", "CHF", "pneumonia")
FINDINGS = ("cardiomegaly", "edema", "effusion", "consolidation", "atelectasis")
_P_FINDING = {1: {"effusion": 0.7, "atelectasis": 0.2}, 2: {"effusion": 0.25, "atelectasis": 0.3,
                                                            "cardiomegaly": 0.15}}

def sample_cases(images: int, seed: int) -> list[dict]:
    """Per image: class, findings, ids and a private random generator (independent of the image count)."""
    root = np.random.default_rng(seed)
    classes = root.permutation(np.arange(images) % 3)
    n_patients = max(1, int(round(images * 0.75)))
    patients = [str(v) for v in 10_000_000 + root.choice(9_000_000, n_patients, replace=False)]
    owner = np.concatenate([np.arange(n_patients), root.integers(0, n_patients, images - n_patients)])
    studies = 50_000_000 + root.choice(9_000_000, images, replace=False)
    out = []
    for i, seq in enumerate(np.random.SeedSequence(seed).spawn(images)):
        rng = np.random.default_rng(seq)
        c = int(classes[i])
        found = {1: {"cardiomegaly", "edema"}, 2: {"consolidation"}}.get(c, set())
        found |= {f for f, p in _P_FINDING.get(c, {}).items() if rng.random() < p}
        pid = patients[owner[i]]
        did = "-".join(f"{v:08x}" for v in rng.integers(0, 2**32, 5, dtype=np.uint64))
        out.append({"class": c, "findings": sorted(found), "patient_id": pid, "study_id": str(studies[i]),
                    "dicom_id": did, "rng": rng,
                    "path": f"files/p{pid[:2]}/p{pid}/s{studies[i]}/{did}.dcm"})
    return out


def _anatomy(u: np.ndarray, v: np.ndarray, big_heart: bool, rng: np.random.Generator):
    """Normal thorax on the unit grid (u = column, v = row fractions): image, masks, lung centres, heart x-radius."""
    j = rng.normal(0.0, 0.01, 4)
    ell = lambda cx, cy, rx, ry: ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2  # noqa: E731
    body = ell(0.5, 0.58, 0.47, 0.62) < 1
    centres = (0.31 + j[0], 0.69 + j[1])
    # hemidiaphragm domes peak medially of the lung centres, so the costophrenic angles are lateral and deep
    dia = np.where(u < 0.5, 0.70 + j[2] + 0.1 * ((u - centres[0] - 0.04) / 0.15) ** 2,
                   0.72 + j[2] + 0.1 * ((u - centres[1] + 0.04) / 0.15) ** 2)
    lung_r = (ell(centres[0], 0.45, 0.15, 0.36) < 1) & (v < dia)  # patient's right = image left
    lung_l = (ell(centres[1], 0.45, 0.15, 0.36) < 1) & (v < dia)
    img = np.where(body, 0.55, 0.04).astype(np.float32)
    img[body & (v >= dia)] = 0.68
    img[lung_r | lung_l] = 0.2
    img += np.where(lung_r | lung_l, 0.1, 0.04) * ((np.mod((v + 0.25 * np.abs(u - 0.5)) / 0.075, 1.0) < 0.3) & body)
    med = (np.abs(u - 0.5) < 0.075) & (v > 0.08) & (v < 0.75) & body
    img[med] = 0.72
    img[(np.abs(u - 0.5) < 0.03) & body] = 0.8
    hrx = 0.145 * (1.35 if big_heart else 1.0) + j[3]  # cardiothoracic ratio ~0.43, enlarged ~0.58
    heart = (ell(0.54, 0.63, hrx, 0.12 * (1.1 if big_heart else 1.0)) < 1) & (v < dia + 0.03)
    img[heart] = 0.7
    lung_r, lung_l = lung_r & ~heart, lung_l & ~heart  # findings and lung masks stop at the heart border
    knob = ell(0.565, 0.3, 0.035, 0.03) < 1
    img[knob] = 0.74
    masks = {"right_lung": lung_r, "left_lung": lung_l, "mediastanum": (med | heart) & ~(lung_r | lung_l),
             "aortic_knob": knob}
    return img, masks, centres, hrx


def _lesions(img, u, v, masks, centres, findings, rng, aspect: float) -> dict:
    """Draw the findings into img (in place); their regions (x, y, sx, sy) as unit-grid fractions."""
    lungs, side = masks["right_lung"] | masks["left_lung"], int(rng.integers(0, 2))
    cx, regions = centres[side], {}
    if "edema" in findings:  # perihilar bat-wing haze
        img += 0.22 * lungs * sum(np.exp(-((u - hx) ** 2 + (v - 0.5) ** 2) / (2 * 0.07**2)) for hx in (0.4, 0.6))
        regions["edema"] = (0.5, 0.5, 0.12, 0.06)
    if "consolidation" in findings:  # focal smooth opacity
        px, py, r = cx + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.58), rng.uniform(0.055, 0.075)
        d = np.sqrt(((u - px) / r) ** 2 + ((v - py) / (r * aspect)) ** 2)
        img += 0.45 / (1 + np.exp((d - 1) / 0.12)) * lungs
        regions["consolidation"] = (px, py, r / 2, r * aspect / 2)
    if "atelectasis" in findings:  # thin plate-like band in the other lung's lower zone
        px, py = centres[1 - side] + rng.uniform(-0.03, 0.03), rng.uniform(0.55, 0.6)
        img += 0.35 * ((np.abs(u - px) < 0.08) & (np.abs(v - py - 0.15 * (u - px)) < 0.012) & lungs)
        regions["atelectasis"] = (px, py, 0.04, 0.01)
    if "effusion" in findings:  # fluid fills the costophrenic angle; the meniscus climbs the chest wall
        lung = masks["left_lung"] if side else masks["right_lung"]
        lat = np.clip((np.abs(u - 0.5) - 0.16) / 0.15, 0.0, 1.0)  # 0 medially, 1 at the chest wall
        lateral = lung & (np.abs(u - 0.5) > abs(cx - 0.5))
        img[lung & (v > v[lateral].max() - 0.05 - 0.1 * lat)] = 0.66
        regions["effusion"] = (cx + (0.09 if side else -0.09), 0.68, 0.03, 0.03)
    return regions


def phantom(h: int, w: int, findings: list[str], rng: np.random.Generator):
    """Image float32 [H, W] in [0, 1], organ masks (bool [H, W]) and target regions (x, y, sx, sy) in pixels."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    v, u = (v + 0.5) / h, (u + 0.5) / w
    img, masks, (cr, cl), hrx = _anatomy(u, v, "cardiomegaly" in findings, rng)
    tour = {"right upper": (cr, 0.3), "right mid": (cr, 0.45), "right lower": (cr, 0.6), "left upper": (cl, 0.3),
            "left mid": (cl, 0.45), "left lower": (cl, 0.6), "mediastinum": (0.5, 0.25), "heart": (0.54, 0.63),
            "right angle": (cr - 0.1, 0.72), "left angle": (cl + 0.1, 0.74)}
    regions = {k: (x, y, 0.04, 0.04) for k, (x, y) in tour.items()}
    if "cardiomegaly" in findings:  # readers check the heart borders
        regions["cardiomegaly"] = (0.54 + 0.8 * hrx, 0.63, 0.03, 0.05)
    regions.update(_lesions(img, u, v, masks, (cr, cl), findings, rng, w / h))
    img = gaussian_filter(img + rng.normal(0.0, 0.012, img.shape).astype(np.float32), 0.8)
    px_regions = {k: (x * w, y * h, sx * w, sy * h) for k, (x, y, sx, sy) in regions.items()}
    return np.clip(img, 0.0, 1.0).astype(np.float32), masks, px_regions


def scanpath(regions: dict, findings: list[str], size: tuple[int, int], rng, focus: float = 1.0):
    """Fixations (points float [N, 2] x, y px; durations [N] s): a tour of both lungs and the heart, then dwell
    on each finding; a reader with focus < 1 dwells less and wanders over the image more."""
    tour = [k for k in regions if k not in FINDINGS]
    targets = [(k, 0.25) for k in tour for _ in range(int(rng.integers(1, 3)))]
    for f in findings:
        targets += [(f, 0.5)] * int(round(rng.integers(3, 6) * focus))
    centre = np.array([[regions[k][0], regions[k][1]] for k, _ in targets])
    spread = np.array([[regions[k][2], regions[k][3]] for k, _ in targets])
    pts = centre + rng.normal(size=centre.shape) * spread
    dur = rng.gamma(4.0, np.array([d for _, d in targets]) / 4.0)
    n_wander = int(round((1.0 - focus) * 2 * len(targets)))
    pts = np.concatenate([pts, rng.uniform(0.1, 0.9, (n_wander, 2)) * [size[1], size[0]]])
    dur = np.concatenate([dur, rng.gamma(4.0, 0.05, n_wander)])
    order = rng.permutation(len(pts)) if n_wander else np.arange(len(pts))
    pts = np.clip(pts[order], 1.0, [size[1] - 2.0, size[0] - 2.0])
    return pts, np.maximum(dur[order], 0.08)
