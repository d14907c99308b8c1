"""Realistic phantom radiographs (the synthetic chest X-ray sets' "realistic" style): per-patient anatomy (habitus,
lung shape, ribs, clavicles, heart, age-related mottling), per-study positioning (tilt, rotation, inspiration),
graded findings, support devices (lines, tubes, ECG electrodes), exposure, quantum and detector noise.

Anatomy is drawn on a patient grid (U, V): unit fractions of the image (column, row) after undoing the study's
in-plane tilt, shift and scale, so masks and regions come back in image pixels. Display values in [0, 1], bright =
dense. Parameter ranges are in `_habitus` (per patient, shared by a patient's studies) and `_study` (per image).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

_EDGE = 0.006  # organ border width (unit grid); a soft border reads like a radiograph, a hard one like a cartoon


def _sig(x, width: float = _EDGE):
    return 0.5 * (1.0 + np.tanh(x / (2.0 * width)))


def _ell(u, v, cx, cy, rx, ry):
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2


def _habitus(patient_id: str, seed: int) -> dict:
    """Per-patient anatomy (unit-grid fractions): same for every study of the patient."""
    rng = np.random.default_rng([int(seed), int(patient_id)])
    names = {"body_rx": (0.37, 0.5), "soft": (0.42, 0.60), "lung_rx": (0.125, 0.17), "lung_top": (0.08, 0.16),
             "lung_sep": (0.165, 0.205), "left_ratio": (0.82, 0.98), "lung_drop": (0.26, 0.40), "dia": (0.62, 0.76),
             "dia_step": (0.0, 0.035), "dome": (0.05, 0.13), "heart_rx": (0.12, 0.16), "heart_ry": (0.12, 0.16),
             "heart_x": (0.525, 0.565), "heart_y": (0.62, 0.70), "med_w": (0.055, 0.08), "rib_spacing": (0.055, 0.085),
             "rib_slope": (0.1, 0.5), "rib_curve": (0.2, 1.4), "rib_phase": (0.0, 1.0), "rib_amp": (0.03, 0.09),
             "clav_y": (0.09, 0.16), "clav_slope": (-0.3, 0.1), "mottle": (0.0, 0.05), "vessels": (0.02, 0.06),
             "vessel_n": (5, 11), "breast": (0.0, 0.1)}
    return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in names.items()} | {"rng": rng}


def _study(rng, noise: float) -> dict:
    """Per-image positioning, exposure and noise."""
    names = {"tilt": (-5.0, 5.0), "dx": (-0.05, 0.05), "dy": (-0.05, 0.05), "scale": (0.88, 1.1),
             "rot": (-0.025, 0.025), "insp": (-0.05, 0.05), "gamma": (0.65, 1.5), "contrast": (0.8, 1.15),
             "offset": (-0.03, 0.06), "heel": (-0.12, 0.12), "quantum": (0.008, 0.022), "detector": (0.003, 0.009),
             "blur": (0.5, 1.0)}
    out = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in names.items()}
    out["quantum"] *= noise
    out["detector"] *= noise
    return out


class _Frame:
    """Patient grid of one image and the map from patient-grid points back to image pixels."""

    def __init__(self, h: int, w: int, st: dict):
        self.h, self.w, self.aspect = h, w, w / h
        self.c, self.s, self.st = np.cos(np.radians(st["tilt"])), np.sin(np.radians(st["tilt"])), st
        v, u = np.mgrid[0:h, 0:w].astype(np.float32)
        x, y = ((u + 0.5) / w - 0.5 - st["dx"]) * self.aspect, (v + 0.5) / h - 0.5 - st["dy"]
        self.U = 0.5 + (self.c * x + self.s * y) / self.aspect / st["scale"]
        self.V = 0.5 + (-self.s * x + self.c * y) / st["scale"]

    def to_pixels(self, x: float, y: float, sx: float, sy: float) -> tuple[float, float, float, float]:
        px, py = (x - 0.5) * self.st["scale"] * self.aspect, (y - 0.5) * self.st["scale"]
        u = 0.5 + self.st["dx"] + (self.c * px - self.s * py) / self.aspect
        v = 0.5 + self.st["dy"] + (self.s * px + self.c * py)
        k = self.st["scale"]
        return float(u * self.w), float(v * self.h), sx * k * self.w, sy * k * self.h


def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _thorax(f: _Frame, a: dict, st: dict, heart_scale: float) -> dict:
    """Soft organ fields [H, W] in [0, 1] (body, lungs, heart, mediastinum, spine, knob, trachea), the diaphragm
    height per pixel and the landmarks (lung centres, heart ellipse)."""
    U, V, rot = f.U, f.V, st["rot"]
    cr, cl = 0.5 - a["lung_sep"], 0.5 + a["lung_sep"]
    base = a["dia"] + st["insp"]
    dia = np.where(U < 0.5, base + a["dome"] * ((U - cr - 0.04) / 0.15) ** 2,
                   base + a["dia_step"] + a["dome"] * ((U - cl + 0.04) / 0.15) ** 2)
    hrx, hry = a["heart_rx"] * heart_scale, a["heart_ry"] * (0.5 + 0.5 * heart_scale)
    hx, hy = a["heart_x"] + rot, a["heart_y"] + 0.5 * st["insp"]
    heart = _sig(1.0 - _ell(U, V, hx, hy, hrx, hry), 0.12) * _sig(dia + 0.03 - V)
    grow = np.clip((V - a["lung_top"]) / 0.14, 0.0, 1.0) ** 0.5 * (0.9 + 0.2 * np.clip((V - 0.3) / 0.4, 0, 1))
    lungs = []
    for cx, rx in ((cr, a["lung_rx"]), (cl, a["lung_rx"] * a["left_ratio"])):
        lungs.append(_sig(rx * grow - np.abs(U - cx)) * _sig(dia - V) * _sig(V - a["lung_top"]) * (1.0 - heart))
    med = _sig(a["med_w"] - np.abs(U - 0.5 - rot)) * _sig(V - 0.06) * _sig(dia - V)
    body = ((U - 0.5) / a["body_rx"]) ** 4 + ((V - 0.62) / 0.7) ** 4  # boxy: shoulders and flanks
    return {"body": _sig(1.0 - body, 0.08), "lung_r": lungs[0],
            "lung_l": lungs[1], "heart": heart, "med": med, "dia": dia, "dia_base": base, "centres": (cr, cl),
            "heart_ell": (hx, hy, hrx),
            "spine": _sig(0.03 - np.abs(U - 0.5)) * (1.0 + 0.2 * np.cos(2 * np.pi * V / 0.045)),
            "knob": _sig(1.0 - _ell(U, V, 0.565 + rot, 0.3, 0.035, 0.03), 0.1),
            "trachea": _sig(0.011 - np.abs(U - 0.5 - 0.5 * rot)) * _sig(0.3 - V) * _sig(V - 0.02)}


def _bones(f: _Frame, a: dict, t: dict) -> np.ndarray:
    """Posterior and anterior rib shadows (per-patient spacing, slope, curvature) and the clavicles."""
    U, V = f.U, f.V
    r = np.abs(U - 0.5)
    zone = _sig(V - a["lung_top"] + 0.04, 0.01) * _sig(t["dia"] + 0.03 - V, 0.01)
    zone = zone * _sig(a["lung_sep"] + a["lung_rx"] + 0.05 - r, 0.01) * _sig(r - 0.035, 0.01)
    phase = (V + a["rib_slope"] * r - a["rib_curve"] * r**2) / a["rib_spacing"] + a["rib_phase"]
    posterior = (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 4
    anterior = (0.5 + 0.5 * np.cos(2 * np.pi * ((V - 0.7 * a["rib_slope"] * r) / (1.15 * a["rib_spacing"])))) ** 6
    lungs = t["lung_r"] + t["lung_l"]
    ribs = a["rib_amp"] * zone * (posterior + 0.45 * anterior * _sig(r - 0.12, 0.02)) * (0.45 + 0.55 * lungs)
    line = a["clav_y"] + 0.03 + a["clav_slope"] * (r - 0.05) + 0.5 * (r - 0.17) ** 2
    clav = _sig(0.013 - np.abs(V - line), 0.004) * _sig(r - 0.045, 0.01) * _sig(0.33 - r, 0.02)
    return ribs + 0.16 * clav


def _lung_texture(f: _Frame, a: dict, t: dict, shape) -> np.ndarray:
    """Vessel markings fanning out from the hila and age-related low-frequency mottling, inside the lungs."""
    U, V, rng = f.U, f.V, a["rng"]
    out = np.zeros(shape, np.float32)
    for key, hx in (("lung_r", 0.5 - 0.07), ("lung_l", 0.5 + 0.07)):
        theta = np.arctan2(V - 0.45, U - hx)
        fan = (0.5 + 0.5 * np.cos(a["vessel_n"] * theta + rng.uniform(0, 2 * np.pi))) ** 8
        out += a["vessels"] * fan * np.exp(-np.hypot(U - hx, V - 0.45) / 0.14) * t[key]
    lungs = t["lung_r"] + t["lung_l"]
    mottling = a["mottle"] * _smooth_noise(rng, shape, 0.05 * shape[0]) * (0.3 + 0.7 * lungs)
    return out + mottling + 0.012 * _smooth_noise(rng, shape, 0.012 * shape[0]) * lungs


def _effusion(f: _Frame, a: dict, t: dict, s: float, rng) -> tuple[np.ndarray, tuple]:
    """Fluid filling one or both costophrenic angles; the meniscus climbs the chest wall. Severity -> height."""
    sides = [int(rng.integers(0, 2))] if rng.random() < 0.7 else [0, 1]
    out = np.zeros_like(f.U)
    for side in sides:
        key, cx = ("lung_l", t["centres"][1]) if side else ("lung_r", t["centres"][0])
        lat = np.clip((np.abs(f.U - 0.5) - 0.16) / 0.15, 0.0, 1.0)
        level = t["dia"] - 0.02 - 0.16 * s - 0.06 * s * lat
        out += (a["lung_drop"] + 0.06) * _sig(f.V - level, 0.008) * t[key]
    cx, y = t["centres"][sides[0]], t["dia_base"] + 0.6 * a["dome"] - 0.03 - 0.08 * s
    return out, (cx + (0.09 if sides[0] else -0.09), y, 0.035, 0.03 + 0.04 * s)


def _findings(f: _Frame, a: dict, t: dict, severity: dict, rng) -> tuple[np.ndarray, dict]:
    """Edema, consolidation, atelectasis and effusion drawn with their severity (cardiomegaly is the heart's
    size, set in `_thorax`); their regions (x, y, sx, sy) on the patient grid."""
    U, V, aspect = f.U, f.V, f.aspect
    lungs, out, regions = t["lung_r"] + t["lung_l"], np.zeros_like(f.U), {}
    side = int(rng.integers(0, 2))
    if "edema" in severity:  # perihilar bat-wing haze and interstitial texture
        s, hy = severity["edema"], 0.47 + rng.uniform(-0.03, 0.03)
        wing = sum(np.exp(-((U - hx) ** 2 + (V - hy) ** 2) / (2 * 0.085**2)) for hx in (0.39, 0.61))
        out += s * lungs * (0.24 * wing + 0.03 * _smooth_noise(rng, U.shape, 0.01 * U.shape[0]))
        regions["edema"] = (0.5, hy, 0.12, 0.06)
    if "consolidation" in severity:  # lobulated smooth opacity
        s, cx = severity["consolidation"], t["centres"][side]
        px, py, r = cx + rng.uniform(-0.05, 0.05), rng.uniform(0.33, 0.6), rng.uniform(0.045, 0.085)
        for _ in range(3):
            qx, qy, q = px + rng.normal(0, 0.4 * r), py + rng.normal(0, 0.4 * r * aspect), r * rng.uniform(0.5, 0.9)
            d = np.sqrt(((U - qx) / q) ** 2 + ((V - qy) / (q * aspect)) ** 2)
            out += 0.2 * s / (1 + np.exp((d - 1) / 0.15)) * lungs
        regions["consolidation"] = (px, py, r / 2, r * aspect / 2)
    if "atelectasis" in severity:  # plate-like band in the other lung's lower zone
        s, slope = severity["atelectasis"], rng.uniform(-0.25, 0.25)
        px, py = t["centres"][1 - side] + rng.uniform(-0.03, 0.03), rng.uniform(0.53, 0.6)
        band = _sig(0.075 - np.abs(U - px)) * _sig(0.01 + 0.005 * s - np.abs(V - py - slope * (U - px)), 0.003)
        out += 0.32 * s * band * lungs
        regions["atelectasis"] = (px, py, 0.04, 0.012)
    if "effusion" in severity:
        fluid, regions["effusion"] = _effusion(f, a, t, severity["effusion"], rng)
        out += fluid
    if "cardiomegaly" in severity:  # readers check the heart borders
        hx, hy, hrx = t["heart_ell"]
        regions["cardiomegaly"] = (hx + 0.8 * hrx, hy, 0.03, 0.05)
    return out, regions


def _polyline(f: _Frame, pts: np.ndarray, width: float) -> np.ndarray:
    """A thin bright curve through pts [K, 2] (patient grid), width in V units; each segment's distance field is
    computed in its pixel bounding box only (the curve is invisible a few pixels away)."""
    best, margin = np.full(f.U.shape, np.inf, np.float32), width * f.h / f.st["scale"] + 4
    for p0, p1 in zip(pts[:-1], pts[1:]):
        (c0, r0, _, _), (c1, r1, _, _) = f.to_pixels(*p0, 0, 0), f.to_pixels(*p1, 0, 0)
        rows = slice(max(int(min(r0, r1) - margin), 0), max(int(max(r0, r1) + margin) + 1, 0))
        cols = slice(max(int(min(c0, c1) - margin), 0), max(int(max(c0, c1) + margin) + 1, 0))
        x, y = f.U[rows, cols] * f.aspect, f.V[rows, cols]
        (x0, y0), (dx, dy) = p0 * [f.aspect, 1.0], (p1 - p0) * [f.aspect, 1.0]
        k = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        best[rows, cols] = np.minimum(best[rows, cols], np.hypot(x - x0 - k * dx, y - y0 - k * dy))
    return _sig(width - best, 0.3 * width)


def _bezier(p0, p1, p2, n: int = 16) -> np.ndarray:
    k = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - k) ** 2 * np.array(p0) + 2 * k * (1 - k) * np.array(p1) + k**2 * np.array(p2)


def _devices(f: _Frame, rng) -> tuple[np.ndarray, list[str]]:
    """Support devices at random per image: ECG electrodes (small discs with a lead), a central line, a nasogastric
    tube, an endotracheal tube."""
    out, names = np.zeros_like(f.U), []
    if rng.random() < 0.45:
        for _ in range(int(rng.integers(1, 5))):
            ex, ey = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.8)
            d = _ell(f.U, f.V, ex, ey, 0.016, 0.016 * f.aspect)
            out += 0.3 * _sig(1.0 - d, 0.15) + 0.15 * _sig(0.25 - np.abs(d - 0.8), 0.05)
            if rng.random() < 0.6:
                end = (ex + rng.uniform(-0.4, 0.4), -0.05 if ey < 0.4 else 1.05)
                out += 0.18 * _polyline(f, _bezier((ex, ey), (ex + rng.uniform(-0.2, 0.2), ey), end), 0.0025)
            names.append("ecg_electrode")
    if rng.random() < 0.2:
        s = 1 if rng.random() < 0.5 else -1
        path = _bezier((0.5 + s * 0.3, 0.05), (0.5 + s * 0.1, 0.16), (0.5 + rng.uniform(-0.01, 0.03), 0.33))
        out, names = out + 0.3 * _polyline(f, path, 0.003), names + ["central_line"]
    if rng.random() < 0.12:
        path = _bezier((0.5, -0.02), (0.49, 0.55), (0.6 + rng.uniform(0, 0.06), 0.86))
        out, names = out + 0.25 * _polyline(f, path, 0.004), names + ["ng_tube"]
    if rng.random() < 0.1:
        tip = rng.uniform(0.17, 0.24)
        out += 0.25 * _polyline(f, np.array([[0.5, -0.02], [0.5, tip]]), 0.007)
        names.append("et_tube")
    return out, names


def _expose(f: _Frame, density: np.ndarray, st: dict, rng) -> np.ndarray:
    """Detector response: gamma, contrast and offset, a heel-effect gradient, quantum noise (larger where fewer
    photons arrive) blurred with the image, then detector noise with column stripes."""
    img = st["offset"] + st["contrast"] * np.clip(density, 0.0, None) ** st["gamma"]
    img = img * (1.0 + st["heel"] * (f.V - 0.5))
    img = img + st["quantum"] * np.sqrt(0.1 + np.clip(img, 0, 1)) * rng.standard_normal(img.shape)
    img = gaussian_filter(img.astype(np.float32), st["blur"])
    stripes = rng.normal(0.0, 0.5 * st["detector"], (1, img.shape[1]))
    img = img + st["detector"] * rng.standard_normal(img.shape) + stripes
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _tour(f: _Frame, a: dict, t: dict) -> dict:
    """Anatomy a reader checks (x, y, sx, sy on the patient grid): three zones per lung, the costophrenic angles,
    the heart and the mediastinum."""
    (cr, cl), top, base = t["centres"], a["lung_top"], t["dia_base"]
    zones = {name: top + k * (base - top) for name, k in (("upper", 0.25), ("mid", 0.5), ("lower", 0.78))}
    out = {f"{side} {name}": (c, y, 0.04, 0.04) for side, c in (("right", cr), ("left", cl))
           for name, y in zones.items()}
    hx, hy, _ = t["heart_ell"]
    out.update({"mediastinum": (0.5 + 0.5 * (hx - a["heart_x"]), 0.25, 0.04, 0.04), "heart": (hx, hy, 0.04, 0.04),
                "right angle": (cr - 0.1, base + 0.7 * a["dome"], 0.04, 0.04),
                "left angle": (cl + 0.1, base + a["dia_step"] + 0.7 * a["dome"], 0.04, 0.04)})
    return out


def radiograph(h: int, w: int, case: dict):
    """A realistic radiograph of one case (keys patient_id, seed, severity, rng, params: `cxr_realistic.Difficulty`):
    image float32 [H, W] in [0, 1], organ masks (bool [H, W]; EGD-CXR names), target regions (x, y, sx, sy) in
    pixels and the support devices drawn."""
    a, rng = _habitus(case["patient_id"], case["seed"]), case["rng"]
    st = _study(rng, case["params"].noise)
    f = _Frame(h, w, st)
    t = _thorax(f, a, st, 1.0 + 0.45 * case["severity"].get("cardiomegaly", 0.0))
    lungs = t["lung_r"] + t["lung_l"]
    abdomen = _sig(f.V - t["dia"]) * (1.0 - lungs)
    thick = 0.85 + 0.3 * np.clip(((f.U - 0.5) / a["body_rx"]) ** 2, 0.0, 1.0)
    breast = a["breast"] * _sig(1.0 - _ell(f.U, f.V, 0.5, 0.72, 0.42, 0.14), 0.1)
    density = (a["soft"] * thick + breast) * t["body"] + 0.1 * abdomen * t["body"] - a["lung_drop"] * lungs
    density += 0.2 * t["med"] + 0.1 * t["spine"] + 0.15 * t["heart"] + 0.12 * t["knob"] - 0.12 * t["trachea"]
    density += _bones(f, a, t) + _lung_texture(f, a, t, (h, w))
    lesions, regions = _findings(f, a, t, case["severity"], rng)
    devices, names = _devices(f, rng)
    img = _expose(f, density + lesions + devices, st, rng)
    lung_r, lung_l = t["lung_r"] > 0.5, t["lung_l"] > 0.5
    centre = ((t["med"] > 0.5) | (t["heart"] > 0.5)) & ~(lung_r | lung_l)
    masks = {"right_lung": lung_r, "left_lung": lung_l, "mediastanum": centre, "aortic_knob": t["knob"] > 0.5}
    regions = {k: f.to_pixels(*r) for k, r in (_tour(f, a, t) | regions).items()}
    return img, masks, regions, names
