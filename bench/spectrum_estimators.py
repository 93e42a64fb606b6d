"""The spectrum fit's estimators and bands, for docs/method.md ("Spectrum fit"): Gaussian fields of known m passed
through an imaging chain (data/imaging_chain.py), and the natural photographs scikit-image ships (offline), cut into
32 px crops.

    python bench/spectrum_estimators.py [--out results.json]

Needs scikit-image (the test extras). Each photograph is reduced so that its short side is 128 px with one
resampling filter (box, bilinear, bicubic or Lanczos), then cut into 32 px crops with a stride of 8 px; also 32 px
crops taken straight from the full-resolution photographs (stride 64 px). The fit is data/spectrum.fit_data with
the paper's c2 = 0.0086, images scaled to [-1, 1] as training scales them. Also prints the c1 arithmetic: the
non-DC power per channel of the paper's model at 32 px against that of the crops in [-1, 1] and in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from PIL import Image

from spd_tune.core.spectrum import freq_radius, log_spectrum_model
from spd_tune.data.imaging_chain import imaged_fields
from spd_tune.data.spectrum import PAPER, fit_data, image_spectra

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")  # natural photographs, bundled with scikit-image
FILTERS = {"box": Image.BOX, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
LITERATURE = (1.6, 3.0, 2.4)  # power exponents from Tolhurst, Tadmor and Chao (1992): range and mean


def photographs() -> dict[str, np.ndarray]:
    import skimage.data

    out = {}
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        out[name] = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    return out


def crops(image: np.ndarray, size: int = 32, stride: int = 8) -> np.ndarray:
    h, w = image.shape[:2]
    return np.stack([image[y:y + size, x:x + size] for y in range(0, h - size + 1, stride)
                     for x in range(0, w - size + 1, stride)])


def reduced(image: np.ndarray, short_side: int, resample: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, resample=resample))


def summary(images: np.ndarray, bootstrap: int) -> dict:
    fit = fit_data(images, c2=PAPER["c2"], bootstrap=bootstrap)
    return {"images": len(images), "default": {"m": fit.m, "ci": fit.ci["m"]}, "residual": fit.residual,
            "residual_noise": fit.noise, "misfit": fit.misfit_reason,
            "estimators": {k: {"m": v["m"], "ci": v["ci"]} for k, v in fit.estimators.items()}}


def c1_arithmetic(images_u8: np.ndarray) -> dict:
    """Non-DC power per channel: the paper's model at 32 px, and the crops scaled to [-1, 1] and to [0, 1]."""
    r = freq_radius(32)
    model = float(torch.exp(log_spectrum_model(r[r > 0], **PAPER)).sum())
    spectra = image_spectra(images_u8)  # [-1, 1]: x = u8 / 127.5 - 1
    non_dc = float(spectra.mean(dim=0)[r > 0].sum())
    return {"model_non_dc": model, "crops_non_dc_minus1_1": non_dc, "crops_non_dc_0_1": non_dc / 4.0,
            "pixel_variance_within_image_0_1": non_dc / 4.0 / 1024}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--bootstrap", type=int, default=100)
    args = p.parse_args()
    started = time.perf_counter()
    out_chain = []
    for m in (1.5, 2.2, 3.0):
        cases = [("pure", None, 0.0)] + [(f"blur {b} px, {f}", f, b) for b in (0.5, 1.0) for f in ("lanczos", "bicubic")]
        for label, resample, blur in cases:
            fit = fit_data(imaged_fields(300, 32, m=m, blur_px=blur, resample=resample, seed=1), c2=1.0,
                           bootstrap=args.bootstrap)
            row = {"m_true": m, "chain": label, "default": fit.m, "misfit": fit.misfit,
                   **{k: v["m"] for k, v in fit.estimators.items()}}
            out_chain.append(row)
            print(json.dumps(row), flush=True)
    photos = photographs()
    out: dict = {"chain": out_chain, "photos": list(PHOTOS), "literature": LITERATURE, "by_filter": {}, "per_photo": {}}
    for name, resample in FILTERS.items():
        pooled = np.concatenate([crops(reduced(image, 128, resample)) for image in photos.values()])
        out["by_filter"][name] = summary(pooled, args.bootstrap)
        print(name, json.dumps(out["by_filter"][name]), flush=True)
    full = np.concatenate([crops(image, stride=64) for image in photos.values()])
    out["full_resolution"] = summary(full, args.bootstrap)
    print("full resolution", json.dumps(out["full_resolution"]), flush=True)
    for name, image in photos.items():
        out["per_photo"][name] = summary(crops(reduced(image, 128, Image.BOX)), args.bootstrap)
    box = np.concatenate([crops(reduced(image, 128, Image.BOX)) for image in photos.values()])
    out["c1"] = c1_arithmetic(box)
    out["seconds"] = time.perf_counter() - started
    print(json.dumps({k: out[k] for k in ("per_photo", "c1", "seconds")}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)


if __name__ == "__main__":
    main()
