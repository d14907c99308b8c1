"""Synthetic EGD-CXR and REFLACX data sets in their real on-disk layouts, with phantom radiographs whose findings
are visible in the pixels and scan paths that dwell on them.

Phantom (display values in [0, 1]): dark lungs above domed hemidiaphragms, bright mediastinum, spine, heart,
aortic knob and ribs. Findings: cardiomegaly (heart widened: cardiothoracic ratio ~0.43 -> ~0.58), edema
(perihilar "bat-wing" haze), consolidation (focal smooth opacity, pneumonia), atelectasis (thin plate-like band),
pleural effusion (fluid filling a costophrenic angle, meniscus rising laterally). Classes Normal / CHF (cardiomegaly
+ edema, often effusion) / pneumonia (consolidation) are balanced; CheXpert columns agree with the findings
(sometimes -1 "uncertain" for a present finding, blank or 0 for absent ones). Some patients have several studies.

Two styles: "basic" (the default; these phantoms, unchanged) and "realistic" (`gazejax.data.synthetic.cxr_realistic`:
between-patient anatomy, positioning, exposure, noise and devices, graded overlapping findings, subtle cases and label
noise, all set by one `difficulty` knob in [0, 1] whose parameter table is in that module's docstring).

`python -m gazejax.data.synthetic egd_cxr|reflacx --out DIR --images N --seed S [--size H W] [--style realistic
--difficulty D --label-noise R]`; the data set goes to DIR/<kind>/ atomically (temp dir + rename) and is reused when
the same arguments were used before. Every root also holds `synthetic_truth.json` (class, findings and the fixations
written, per image; realistic: also the written label, severities, finding regions and devices) for tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from gazejax.data.cxr import egd_cxr, reflacx
from gazejax.data.cxr.labels import write_columns
from gazejax.data.synthetic import cxr_anatomy, cxr_realistic
from gazejax.data.synthetic.cxr_phantom import CLASSES, phantom, sample_cases, scanpath

_CHX = {"cardiomegaly": "cardiomegaly__chx", "edema": "edema__chx", "effusion": "pleural_effusion__chx",
        "consolidation": "consolidation__chx", "atelectasis": "atelectasis__chx"}
_EGD_FINDING = {"cardiomegaly": "enlarged_cardiac_silhouette", "edema": "pulmonary_edema__hazy_opacity",
                "effusion": "pleural_effusion_or_thickening", "consolidation": "consolidation",
                "atelectasis": "linear__patchy_atelectasis"}
_REFLACX_LABEL = {"cardiomegaly": "Enlarged cardiac silhouette", "edema": "Pulmonary edema",
                  "consolidation": "Consolidation", "atelectasis": "Atelectasis"}
_WORDS = {"cardiomegaly": "the heart is enlarged", "edema": "there is pulmonary edema",
          "effusion": "there is a pleural effusion", "consolidation": "there is a focal consolidation",
          "atelectasis": "there is plate-like atelectasis"}


def _uid(rng) -> str:
    return "2.25." + str(int.from_bytes(rng.bytes(15), "big"))


def _write_dicom(path: str, image: np.ndarray, case: dict, monochrome1: bool) -> None:
    """12-bit DICOM whose window (2048/4096, LINEAR) maps stored values s to display s / 4095."""
    stored = np.round(image * 4095).astype(np.uint16)
    rng = case["rng"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = _uid(rng)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(rng), _uid(rng)
    ds.PatientID, ds.StudyID, ds.Modality, ds.ViewPosition = case["patient_id"], case["study_id"], "DX", "PA"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.ImagerPixelSpacing = [0.139 * 3056 / image.shape[0]] * 2
    ds.PixelData = (4095 - stored if monochrome1 else stored).tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _render(case: dict, size: tuple[int, int], mimic: str, index: int):
    if "severity" in case:  # realistic style
        img, masks, regions, case["devices"] = cxr_anatomy.radiograph(size[0], size[1], case)
        case["regions"] = {f: [round(float(x), 2) for x in regions[f]] for f in case["findings"]}
    else:
        img, masks, regions = phantom(size[0], size[1], case["findings"], case["rng"])
    _write_dicom(os.path.join(mimic, case["path"]), img, case, monochrome1=index % 5 == 4)
    return masks, regions


def _scanpath(case: dict, regions: dict, size: tuple[int, int], focus: float = 1.0):
    if "severity" in case:
        return cxr_realistic.scanpath(regions, case["severity"], size, case["rng"], focus)
    return scanpath(regions, case["findings"], size, case["rng"], focus)


def _truth(case: dict, **fields) -> dict:
    """An image's synthetic_truth.json entry; the realistic style adds what its files say and its severities."""
    out = {"class": CLASSES[case["class"]], "findings": case["findings"], **fields}
    if "severity" in case:
        out.update(label=CLASSES[case["label"]], label_findings=case["label_findings"], flipped=case["flipped"],
                   severity=case["severity"], devices=case["devices"], regions=case["regions"])
    return out


def _box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())]


def _egd_master_row(case: dict, pads: tuple[int, ...]) -> dict:
    rng, found, cls = case["rng"], set(case.get("label_findings", case["findings"])), case.get("label", case["class"])
    row = {"dicom_id": case["dicom_id"], "path": case["path"], "study_id": case["study_id"],
           "patient_id": case["patient_id"], "stay_id": str(30_000_000 + int(rng.integers(9_000_000))),
           "gender": "FM"[int(rng.integers(2))], "anchor_age": "50 - 60", "normal_reports": str(int(cls == 0)),
           "cxr_exam_indication": f"___ with {CLASSES[cls]}, shortness of breath"}
    row.update(zip(egd_cxr.PAD_COLUMNS, map(str, pads)))
    row.update({c: str(int(i == cls)) for i, c in enumerate(CLASSES)})
    row.update({c: "0" for c in egd_cxr.FINDING_COLUMNS})
    row.update({_EGD_FINDING[f]: "1" for f in found})
    row["normal_anatomically"] = str(int(cls == 0))
    for f, c in _CHX.items():
        row[c] = ("1" if rng.random() < 0.8 else "-1") if f in found else ("0" if rng.random() < 0.3 else "")
    row["no_finding__chx"] = "1" if cls == 0 else ""
    row["pneumonia__chx"] = ("1" if rng.random() < 0.6 else "-1") if cls == 2 else ""
    if case.get("devices"):
        row["support_devices__chx"] = "1"
    return row


def _egd_gaze(case: dict, pts: np.ndarray, dur: np.ndarray, pads, size, t0: float) -> dict:
    """Fixation-table columns for one image: FPOG screen fractions and X/Y_ORIGINAL by the data set's mapping."""
    (top, bottom, left, right), (h, w), (sw, sh) = pads, size, egd_cxr.SCREEN
    rw, rh = sw - left - right, sh - top - bottom
    n_off = 2
    fx = np.concatenate([left + pts[:, 0] * rw / w, [left * 0.5] * n_off]) / sw
    fy = np.concatenate([top + pts[:, 1] * rh / h, [sh * 0.5] * n_off]) / sh
    fx, fy = (np.round(a, 10) for a in (fx, fy))
    inside = np.arange(len(fx)) < len(pts)
    xo = np.where(inside, fx * sw - left, -1.0) * (w / rw)
    yo = np.where(inside, fy * sh - top, -1.0) * (h / rh)
    d = np.concatenate([dur, [0.2] * n_off])
    start = t0 + np.cumsum(np.concatenate([[0.0], d[:-1] + 0.03]))
    return {"DICOM_ID": case["dicom_id"], "FPOGX": fx, "FPOGY": fy, "FPOGS": start, "FPOGD": d,
            "X_ORIGINAL": np.trunc(xo).astype(int), "Y_ORIGINAL": np.trunc(yo).astype(int)}


def _calibration(case: dict, t0: float) -> dict:
    """Gaze on a calibration screen, named after the image minus 5 characters; X/Y_ORIGINAL in screen pixels."""
    fx, fy = 0.5 + case["rng"].normal(0, 0.01, 3), 0.5 + case["rng"].normal(0, 0.01, 3)
    d = np.full(3, 0.3)
    return {"DICOM_ID": case["dicom_id"][:-5], "FPOGX": np.round(fx, 10), "FPOGY": np.round(fy, 10),
            "FPOGS": t0 + np.arange(3) * 0.33, "FPOGD": d, "X_ORIGINAL": (fx * 1920).astype(int),
            "Y_ORIGINAL": (fy * 1080).astype(int)}


def _egd_tables(blocks: list[dict], root: str) -> None:
    """fixations.csv (one row per fixation) and eye_gaze.csv (60 Hz samples) from per-image gaze blocks."""
    cols = {k: np.concatenate([np.broadcast_to(b[k], len(b["FPOGX"])) for b in blocks]) for k in blocks[0]}
    n = len(cols["FPOGX"])
    cols["Time (in secs)"] = cols["FPOGS"] + cols["FPOGD"]
    cols.update({"CNT": np.round(cols["Time (in secs)"] * 60).astype(int), "FPOGID": np.arange(n) + 1,
                 "TIMETICK(f=10000000)": np.round(cols["Time (in secs)"] * 1e7).astype(np.int64),
                 "BPOGX": cols["FPOGX"], "BPOGY": cols["FPOGY"], "FPOGV": "1", "BPOGV": "1", "LPV": "1",
                 "RPV": "1", "LPD": "18.0", "RPD": "18.0", "BKPMIN": "20"})
    fmt = {c: "%.5f" for c in ("Time (in secs)", "FPOGS", "FPOGD")}
    fmt.update({c: "%.10f" for c in ("FPOGX", "FPOGY", "BPOGX", "BPOGY")}, DICOM_ID="%s")
    write_columns(os.path.join(root, "fixations.csv"), egd_cxr.GAZE_COLUMNS, cols, n, fmt)
    reps = np.maximum(np.floor(cols["FPOGD"] * 60).astype(int), 1)
    k = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    samples = {c: (np.repeat(a, reps) if isinstance(a, np.ndarray) else a) for c, a in cols.items()}
    samples["FPOGD"] = k / 60.0
    samples["Time (in secs)"] = samples["FPOGS"] + samples["FPOGD"]
    write_columns(os.path.join(root, "eye_gaze.csv"), egd_cxr.GAZE_COLUMNS, samples, int(reps.sum()), fmt)


def _cases(images: int, seed: int, style: str = "basic", difficulty: float = 0.5, label_noise=None) -> list[dict]:
    if style == "basic":
        return sample_cases(images, seed)
    return cxr_realistic.sample_cases(images, seed, cxr_realistic.difficulty_params(difficulty, label_noise))


def _build_egd(tmp: str, images: int, seed: int, size: tuple[int, int], **style) -> dict:
    root, mimic = os.path.join(tmp, "egd-cxr"), os.path.join(tmp, "mimic-cxr")
    pads, master, blocks, boxes, truth, t = egd_cxr.display_pads(*size), [], [], [], {}, 0.0
    for i, case in enumerate(_cases(images, seed, **style)):
        masks, regions = _render(case, size, mimic, i)
        seg = os.path.join(root, "audio_segmentation_transcripts", case["dicom_id"])
        os.makedirs(seg)
        for name, m in masks.items():
            Image.fromarray(m.astype(np.uint8) * 255).save(os.path.join(seg, f"{name}.png"))
            x1, y1, x2, y2 = _box(m)
            boxes.append([case["dicom_id"], name.replace("_", " "), x1, x2, y1, y2])
        master.append(_egd_master_row(case, pads))
        pts, dur = _scanpath(case, regions, size)
        session = {"SESSION_ID": np.array(i // 30 + 1), "MEDIA_ID": np.array(i % 30)}
        t = 0.0 if i % 30 == 0 else t
        if i % 20 == 0:
            blocks.append({**_calibration(case, t), **session})
            t += 1.5
        blocks.append({**_egd_gaze(case, pts, dur, pads, size, t), **session})
        t = float(blocks[-1]["FPOGS"][-1] + blocks[-1]["FPOGD"][-1] + 1.0)
        truth[case["dicom_id"]] = _truth(case, points=pts.tolist(), durations=blocks[-1]["FPOGD"][:len(pts)].tolist())
    with open(os.path.join(root, "master_sheet.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, egd_cxr.MASTER_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(master)
    with open(os.path.join(root, "bounding_boxes.csv"), "w", newline="") as f:
        csv.writer(f).writerows([egd_cxr.BOX_COLUMNS] + boxes)
    _egd_tables(blocks, root)
    return truth


def _reflacx_names(phase: int) -> dict[str, str]:
    """Finding -> REFLACX label column of that phase (effusion is "Pleural abnormality" from phase 2 on)."""
    return dict(_REFLACX_LABEL, effusion="Pleural effusion" if phase == 1 else "Pleural abnormality")


def _reflacx_labels(phase: int, findings: list[str], rng, focus: float) -> dict[str, str]:
    present = {_reflacx_names(phase)[f] for f in findings}
    sure = [4, 5] if focus >= 0.6 else [3, 4]
    out = {n: str(int(rng.choice(sure))) if n in present else str(int(rng.choice([0, 0, 0, 1, 2])))
           for n in reflacx.PHASE_LABELS[phase]}
    out.update({n: "False" for n in ("Support devices", "Quality issue") if n in out})
    return out


def _reflacx_reading(folder: str, case: dict, regions: dict, size, phase: int, focus: float) -> dict:
    """One reading's files; returns its truth (kept fixations, sigma, labels)."""
    (h, w), rng = size, case["rng"]
    pts, dur = _scanpath(case, regions, size, focus)
    pts = np.round(pts)
    rects = np.tile([0.0, 0.0, w, h], (len(pts), 1))
    if rng.random() < 0.3:  # zoomed in for the last third: shown rectangle = box around those fixations
        tail = slice(2 * len(pts) // 3, None)
        lo, hi = np.maximum(pts[tail].min(0) - 20, 0), np.minimum(pts[tail].max(0) + 20, [w, h])
        rects[tail] = np.round(np.concatenate([lo, hi]))
    off = np.array([[-40.0, h / 2], [w / 2, h + 30.0]])  # gaze on the interface buttons, off the image
    pts, rects = np.concatenate([pts, off]), np.concatenate([rects, np.tile([0.0, 0.0, w, h], (2, 1))])
    start = np.round(1.0 + np.cumsum(np.concatenate([[0.0], dur[:-1] + 0.03])), 3)
    start = np.concatenate([start, start[-1] + dur[-1] + [0.1, 0.5]])
    end = np.round(start + np.concatenate([dur, [0.2, 0.2]]), 3)
    dest = np.array([650.0, 0.0, 650.0 + round(1080 * w / h), 1080.0])
    ppd = np.round(45.0 * (rects[:, 2:] - rects[:, :2]) / (dest[2:] - dest[:2]))
    cols = dict(zip(reflacx.FIXATION_COLUMNS, [start, end, pts[:, 0], pts[:, 1], "0.95", ppd[:, 0], ppd[:, 1],
                                                 "1.0", "0.5", *rects.T, *np.tile(dest, (len(pts), 1)).T]))
    os.makedirs(folder)
    fmt = {"timestamp_start_fixation": "%.3f", "timestamp_end_fixation": "%.3f"}
    write_columns(os.path.join(folder, "fixations.csv"), reflacx.FIXATION_COLUMNS, cols, len(pts), fmt)
    found = case.get("label_findings", case["findings"])  # what the reader reports (label noise: another class's)
    labels = _reflacx_labels(phase, found, rng, focus)
    chest = np.round(np.array([0.14 * w, 0.1 * h, 0.86 * w, 0.78 * h]) + rng.normal(0, 3, 4))
    with open(os.path.join(folder, "chest_bounding_box.csv"), "w", newline="") as f:
        csv.writer(f).writerows([reflacx.BOX_COLUMNS, chest.astype(int).tolist()])
    names = sorted(labels)
    rows = [list(reflacx.BOX_COLUMNS) + ["certainty"] + names]
    for f_name, label in _reflacx_names(phase).items():
        if f_name in found and f_name in regions and int(labels[label]) >= 3:
            x, y, sx, sy = regions[f_name]
            box = [int(round(x - 2 * sx)), int(round(y - 2 * sy)), int(round(x + 2 * sx)), int(round(y + 2 * sy))]
            rows.append(box + [labels[label]] + [str(n == label) for n in names])
    with open(os.path.join(folder, "anomaly_location_ellipses.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)
    words = " . ".join(_WORDS[f] for f in found) or "no acute cardiopulmonary process"
    with open(os.path.join(folder, "transcription.txt"), "w") as f:
        f.write(words + " .")
    n = len(pts) - 2
    return {"points": pts[:n].tolist(), "durations": (end - start)[:n].tolist(), "sigma": ppd[:n].tolist(),
            "labels": labels, **({"focus": focus} if "severity" in case else {})}


def _reading_id(phase: int, trial: int, rng, taken: set) -> str:
    """REFLACX reading id: P<phase><trial:02>R<6 random digits> (phase 3: P300R...), unique."""
    while (rid := f"P{phase}{trial:02}R{int(rng.integers(10**6)):06}") in taken:
        pass
    taken.add(rid)
    return rid


_FOCUS = (1.0, 0.9, 0.5, 0.8, 0.4)  # the five synthetic readers: experts dwell on findings, novices wander


def _build_reflacx(tmp: str, images: int, seed: int, size: tuple[int, int], **style) -> dict:
    main, mimic = os.path.join(tmp, "reflacx", "main_data"), os.path.join(tmp, "mimic-cxr")
    n_multi, ids, truth = images // 8, set(), {}
    tables: dict[int, list] = {1: [], 2: [], 3: []}
    for i, case in enumerate(_cases(images, seed, **style)):
        _, regions = _render(case, size, mimic, i)
        phase = 1 if i < n_multi else 2 if i < 2 * n_multi else 3
        users = [0, 1, 2] if phase < 3 else [i % 5] + ([4] if i % 15 == 7 else [])  # 2nd phase-3 one: discarded
        entry = truth[case["dicom_id"]] = _truth(case, readings={}, discarded=[])
        for k, user in enumerate(users):
            rid = _reading_id(phase, i % n_multi if phase < 3 else 0, case["rng"], ids)
            discarded = phase == 3 and k == 1
            row = {"id": rid, "split": {8: "validate", 9: "test"}.get(int(case["patient_id"]) % 10, "train"),
                   "eye_tracking_data_discarded": str(discarded), "image": f"physionet.org/files/mimic-cxr/2.0.0/"
                   f"{case['path']}", "dicom_id": case["dicom_id"], "subject_id": case["patient_id"],
                   "image_size_x": size[1], "image_size_y": size[0]}
            if discarded:
                found = case.get("label_findings", case["findings"])
                row.update(_reflacx_labels(phase, found, case["rng"], _FOCUS[user]))
                entry["discarded"].append(rid)
            else:
                reading = _reflacx_reading(os.path.join(main, rid), case, regions, size, phase, _FOCUS[user])
                row.update(reading["labels"])
                entry["readings"][rid] = reading
            tables[phase].append(row)
    for phase, rows in tables.items():
        with open(os.path.join(main, f"metadata_phase_{phase}.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, reflacx.META_COLUMNS + tuple(sorted(reflacx.PHASE_LABELS[phase])))
            writer.writeheader()
            writer.writerows(rows)
    return truth


def _atomic(out: str, kind: str, params: dict, build) -> str:
    """Build DIR/<kind> in a temp dir and rename it into place; reuse it when built with the same params (and, for
    the realistic style, the same `cxr_realistic.VERSION`: a set drawn by an older generator is rebuilt)."""
    final, stamp = os.path.join(out, kind), os.path.join(out, kind, ".complete.json")
    record = params | ({"generator": cxr_realistic.VERSION} if params.get("style", "basic") != "basic" else {})
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == record:
                return final
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{kind}-", dir=out)
    try:
        truth = build(tmp, **params)
        data_root = next(os.path.join(tmp, d) for d in sorted(os.listdir(tmp)) if not d.startswith("mimic"))
        with open(os.path.join(data_root, "synthetic_truth.json"), "w") as f:
            json.dump(truth, f)
        with open(os.path.join(tmp, ".complete.json"), "w") as f:
            json.dump(record, f)
        old = tmp + ".old"
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        for leftover in (tmp, tmp + ".old"):
            shutil.rmtree(leftover, ignore_errors=True)
    return final


STYLES = cxr_realistic.STYLES


def _params(images: int, seed: int, size, style: str = "basic", difficulty: float = 0.5, label_noise=None) -> dict:
    """Build parameters (the reuse stamp); the basic style's are those of the sets written before styles existed."""
    if images < 1 or len(size) != 2 or min(size) < 64:
        raise ValueError(f"need images >= 1 and a size (H, W) of at least 64 px, got {images}, {size}")
    out = {"images": int(images), "seed": int(seed), "size": [int(s) for s in size]}
    return out | cxr_realistic.style_params(style, difficulty, label_noise)


def generate_egd_cxr(out: str, images: int = 60, seed: int = 0, size=(512, 416), style: str = "basic",
                     difficulty: float = 0.5, label_noise: float | None = None) -> tuple[str, str]:
    """Synthetic EGD-CXR under out/egd_cxr/; returns (root, mimic_root) for `EGDCXR`. style "basic" (the original
    phantoms; difficulty ignored) or "realistic" (`cxr_realistic`: difficulty in [0, 1], label_noise overrides)."""
    params = _params(images, seed, size, style, difficulty, label_noise)
    final = _atomic(os.fspath(out), "egd_cxr", params, _build_egd)
    return os.path.join(final, "egd-cxr"), os.path.join(final, "mimic-cxr")


def generate_reflacx(out: str, images: int = 60, seed: int = 0, size=(512, 416), style: str = "basic",
                     difficulty: float = 0.5, label_noise: float | None = None) -> tuple[str, str]:
    """Synthetic REFLACX under out/reflacx/; returns (root, mimic_root) for `REFLACX`; style as `generate_egd_cxr`."""
    params = _params(images, seed, size, style, difficulty, label_noise)
    final = _atomic(os.fspath(out), "reflacx", params, _build_reflacx)
    return os.path.join(final, "reflacx"), os.path.join(final, "mimic-cxr")


def read_truth(root: str) -> dict:
    """The generator's record of a synthetic data set root: per image its class, findings and fixations."""
    with open(os.path.join(root, "synthetic_truth.json")) as f:
        return json.load(f)


def cli(argv: list[str]) -> int:
    """`egd_cxr|reflacx --out DIR --images N --seed S [--size H W] [--style basic|realistic] [--difficulty D]
    [--label-noise R]`; prints the data root and the MIMIC root."""
    parser = argparse.ArgumentParser(prog="python -m gazejax.data.synthetic")
    parser.add_argument("kind", choices=("egd_cxr", "reflacx"))
    parser.add_argument("--out", required=True, help="output folder; the data set goes to OUT/<kind>/")
    parser.add_argument("--images", type=int, default=60, help="number of radiographs")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 416), metavar=("H", "W"), help="DICOM size")
    parser.add_argument("--style", choices=STYLES, default="basic", help="phantom style (realistic: see cxr_realistic)")
    parser.add_argument("--difficulty", type=float, default=0.5, help="realistic style: 0 easy .. 1 hard")
    parser.add_argument("--label-noise", type=float, default=None, help="realistic style: share of flipped labels")
    args = parser.parse_args(argv)
    make = generate_egd_cxr if args.kind == "egd_cxr" else generate_reflacx
    try:
        root, mimic_root = make(args.out, args.images, args.seed, tuple(args.size), args.style, args.difficulty,
                                args.label_noise)
    except ValueError as e:
        parser.error(str(e))
    print(f"{args.kind}: root={root} mimic_root={mimic_root}")
    return 0
