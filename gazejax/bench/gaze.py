"""Benchmark: gazejax's analytic, separable heat maps vs the reference "dots -> full-resolution blur -> resample".

Setup: a 3056 x 2544 radiograph (a MIMIC-CXR DICOM size), 300 random fixations at integer pixels (like EGD-CXR's
X_ORIGINAL / Y_ORIGINAL), durations U(0.1, 1.0) s as weights. Two reference blurs at DICOM resolution:
  sigma150  EGD-CXR's sigma = 150 px: scipy.ndimage.gaussian_filter (truncate=4, a 1201-tap kernel);
  k501      MT-UNet / GG-CAM code (cv.GaussianBlur(dots, (501, 501), 0)): OpenCV's kernel rule gives sigma = 75.5 px,
            cut at 250 px; the same taps are applied separably with scipy.ndimage.convolve1d (no cv2 dependency).
Both references use mode="constant" (zero padding): that is a sum of Gaussians on an unbounded plane, which is what
the analytic renderer computes (OpenCV's default BORDER_REFLECT_101 would fold mass back in at the border).
Targets: 640 x 512 and 48 x 40. 3056/640 and 2544/512 are not integers, so, as the CXR pipelines do, the image is
first zero-padded (centred) to a whole number of cells: 3200 x 2560 then 5 x 5 blocks (MT-UNet: a multiple of 32*5,
then /5) and 3072 x 2560 then 64 x 64 blocks (GG-CAM: 48 x 40 CAM grid). The reference averages each block ("area"
resampling); gazejax renders the same padded frame via `pad_resize_transform(pad)` in mode="area", with the
kernel's cut as `truncate`, so both compute the same quantity and differ only by sampling the kernel at pixel
centres (~1/(12 sigma^2) relative). Differences are on maps divided by their max.
Times: best of --repeats runs (the reference: one run); JAX jitted, timed after a warm-up call, on the default
JAX device. Run: `python -m gazejax.bench.gaze [--repeats 5] [--seed 0]`.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from gazejax.data import gaze

IMAGE = (3056, 2544)
# target -> (padded frame, cell size in pixels)
TARGETS = {(640, 512): ((3200, 2560), 5), (48, 40): ((3072, 2560), 64)}


def opencv_taps(ksize: int) -> tuple[np.ndarray, float]:
    """cv.getGaussianKernel(ksize, 0): taps normalised to sum 1, and the sigma OpenCV derives from ksize."""
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    taps = np.exp(-0.5 * (np.arange(ksize) - (ksize - 1) / 2) ** 2 / sigma**2)
    return taps / taps.sum(), sigma


def reference_map(points: np.ndarray, weights: np.ndarray, blur: str, frame: tuple, cell: int) -> np.ndarray:
    """Dot image -> centred zero padding to `frame` -> full-resolution blur -> mean over cell x cell blocks."""
    pad = [(f - i) // 2 for f, i in zip(frame, IMAGE)]
    dots = np.zeros(frame)
    np.add.at(dots, (points[:, 0] + pad[0], points[:, 1] + pad[1]), weights)
    if blur == "sigma150":
        blurred = ndimage.gaussian_filter(dots, 150.0, mode="constant", truncate=4.0)
    else:
        taps, _ = opencv_taps(501)
        blurred = ndimage.convolve1d(ndimage.convolve1d(dots, taps, 0, mode="constant"), taps, 1, mode="constant")
    return blurred.reshape(frame[0] // cell, cell, frame[1] // cell, cell).mean(axis=(1, 3))


def analytic_kwargs(blur: str, frame: tuple) -> dict:
    """render_gaussians arguments that compute what `reference_map` does, in the padded frame."""
    if blur == "sigma150":
        sigma, radius = 150.0, int(4.0 * 150.0 + 0.5)  # scipy's kernel radius for truncate=4
    else:
        sigma, radius = opencv_taps(501)[1], 250
    pad = [(f - i) // 2 for f, i in zip(frame, IMAGE)]
    # The last tap's pixel reaches half a pixel beyond its centre.
    return dict(sigma=sigma, in_shape=frame, transform=gaze.pad_resize_transform(pad),
                truncate=(radius + 0.5) / sigma)


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    points = np.stack([rng.integers(0, n, 300) for n in IMAGE], axis=-1)
    durations = rng.uniform(0.1, 1.0, 300)
    points_dev, durations_dev = jnp.asarray(points, jnp.float32), jnp.asarray(durations, jnp.float32)
    print(f"{len(points)} fixations on a {IMAGE[0]}x{IMAGE[1]} image; JAX device: {jax.devices()[0]}")
    print(f"{'blur':9s} {'target':8s} {'reference s':>11s} {'numpy ms':>9s} {'jax ms':>8s} {'x numpy':>8s} "
          f"{'x jax':>8s} {'maxdiff np':>10s} {'maxdiff jax':>11s} {'untrunc.':>9s}")
    for blur in ("sigma150", "k501"):
        for target, (frame, cell) in TARGETS.items():
            ref_s, ref = best_time(lambda: reference_map(points, durations, blur, frame, cell), 1)
            kw = analytic_kwargs(blur, frame)
            np_s, np_map = best_time(lambda: gaze.render_gaussians(points, durations, out_shape=target, **kw),
                                     args.repeats)
            jax_fn = lambda: gaze.render_gaussians_jax(points_dev, durations_dev, out_shape=target, **kw)
            jax_fn()  # compile
            jax_s, jax_map = best_time(jax_fn, args.repeats)
            exact = gaze.render_gaussians(points, durations, out_shape=target, **{**kw, "truncate": None})
            ref = ref / ref.max()
            print(f"{blur:9s} {target[0]:>3d}x{target[1]:<4d} {ref_s:11.2f} {np_s * 1e3:9.2f} {jax_s * 1e3:8.2f} "
                  f"{ref_s / np_s:8.0f} {ref_s / jax_s:8.0f} {np.abs(np_map - ref).max():10.2e} "
                  f"{np.abs(np.asarray(jax_map) - ref).max():11.2e} {np.abs(exact - ref).max():9.2e}")
    print("x numpy / x jax: reference time / gazejax time; maxdiff: max |gazejax - reference| on maps in [0, 1] "
          "(untrunc.: gazejax with the exact, uncut Gaussian)")


if __name__ == "__main__":
    main()
