"""The spectrum fit's estimators and bands: known answers through an imaging chain (blur, 2x reduction, uint8),
Whittle against least squares, the misfit flag, real photographs (scikit-image's), and the command's output."""

import json
import math

import numpy as np
import pytest
import torch

from spd_tune.core.spectrum import BANDS, fit_spectrum, freq_radius, gaussian_field, log_spectrum_model
from spd_tune.data.imaging_chain import imaged_fields
from spd_tune.data.spectrum import fit_data
from spd_tune.spectrum import main

M_TRUE = (1.5, 2.2, 3.0)


@pytest.mark.parametrize("m_true", M_TRUE)
def test_the_default_recovers_m_through_an_imaging_chain_and_on_pure_fields(m_true):
    pure = fit_data(imaged_fields(300, 32, m=m_true, resample=None), c2=1.0, bootstrap=0)
    assert pure.m == pytest.approx(m_true, abs=0.1)
    for blur_px in (0.5, 1.0):
        for resample in ("lanczos", "bicubic"):
            images = imaged_fields(300, 32, m=m_true, blur_px=blur_px, resample=resample, seed=1)
            fit = fit_data(images, c2=1.0, bootstrap=0)
            assert (fit.estimator, fit.band) == ("whittle", (0.0, 32 / 6))
            assert fit.m == pytest.approx(m_true, abs=0.3), (blur_px, resample, fit.m)
            # what the default avoids: every bin at equal weight, most of them near Nyquist, is pulled far away
            for name in ("ls_all", "whittle_all", "whittle_high"):
                assert fit.estimators[name]["m"] > m_true + 1.0, (name, fit.estimators[name])


def test_whittle_and_least_squares_agree_on_pure_fields():
    fit = fit_data(imaged_fields(400, 32, m=2.6, resample=None, seed=2), c2=1.0, bootstrap=0)
    for band in BANDS:
        assert fit.estimators[f"whittle_{band}"]["m"] == pytest.approx(fit.estimators[f"ls_{band}"]["m"], abs=0.05)
        assert fit.estimators[f"whittle_{band}"]["m"] == pytest.approx(2.6, abs=0.1)
    # and each estimator alone on an exact spectrum returns its constants
    exact = torch.exp(log_spectrum_model(freq_radius(32), 3.0, 1.0, 2.3))
    for estimator in ("ls", "whittle"):
        params = fit_spectrum(exact, c2=1.0, band=(2.0, 9.0), estimator=estimator)
        assert params.m == pytest.approx(2.3, abs=1e-6) and params.c1 == pytest.approx(3.0, rel=1e-6)


def _bent_fields(count: int, n: int = 32, bend: float = 5.0, seed: int = 0) -> torch.Tensor:
    """Fields whose spectrum falls as |f|^-2 up to ``bend`` and as |f|^-4 beyond it (continuous at the bend)."""
    r = freq_radius(n)
    log_d = math.log(0.5) - 2.0 * torch.log(1.0 + r) - 2.0 * torch.clamp(torch.log((1.0 + r) / (1.0 + bend)), min=0)
    return gaussian_field(count, 3, n, log_d, torch.Generator().manual_seed(seed))


def test_the_misfit_flag_is_set_on_a_bent_spectrum_and_not_on_a_power_law():
    bent = fit_data(_bent_fields(300), c2=1.0, bootstrap=100)
    assert bent.misfit and "a single power law fits this data poorly" in bent.misfit_reason
    assert "low/high" in bent.misfit_reason
    pure = fit_data(gaussian_field(300, 3, 32, log_spectrum_model(freq_radius(32), 0.5, 1.0, 2.0),
                                   torch.Generator().manual_seed(0)), c2=1.0, bootstrap=100)
    assert not pure.misfit and pure.misfit_reason == "", pure.misfit_reason
    assert pure.residual < 0.1 and pure.noise > 0
    for seed in (1, 2, 3):  # stored as uint8, several draws (seed 1's low and high bands are 3 standard errors apart)
        stored = fit_data(imaged_fields(300, 32, m=2.2, resample=None, seed=seed), c2=1.0, bootstrap=100)
        assert not stored.misfit, (seed, stored.misfit_reason)


def _photo_crops(resample) -> np.ndarray:
    import skimage.data
    from PIL import Image

    out = []
    for name in ("astronaut", "camera", "chelsea", "coffee", "rocket"):  # photographs bundled with scikit-image
        image = getattr(skimage.data, name)()
        image = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
        h, w = image.shape[:2]
        size = (round(w * 128 / min(h, w)), round(h * 128 / min(h, w)))
        small = np.asarray(Image.fromarray(image).resize(size, resample=resample))
        out += [small[y:y + 32, x:x + 32] for y in range(0, small.shape[0] - 31, 16)
                for x in range(0, small.shape[1] - 31, 16)]
    return np.stack(out)


def test_on_real_photographs_the_default_lands_in_the_literatures_range_whatever_the_resampling():
    from PIL import Image

    fits = {name: fit_data(_photo_crops(f), bootstrap=0) for name, f in
            (("box", Image.BOX), ("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS))}
    defaults = [f.m for f in fits.values()]
    every_bin = [f.estimators["ls_all"]["m"] for f in fits.values()]
    assert all(1.6 <= m <= 3.0 for m in defaults), defaults  # Tolhurst et al. 1992: power exponents 1.6 to 3.0
    assert max(defaults) - min(defaults) < 0.2, defaults
    assert max(every_bin) - min(every_bin) > 0.4, every_bin  # the old fit moved with the resampling filter
    assert all(f.misfit for f in fits.values())  # and photographs are not a single power law


def _save_pngs(folder, images):
    from PIL import Image

    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


def test_the_command_on_a_folder_of_32px_pngs_without_image_size(tmp_path, capsys):
    _save_pngs(tmp_path / "pngs", imaged_fields(48, 32, m=2.2, blur_px=1.0, resample="bicubic"))
    assert main([str(tmp_path / "pngs"), "--c2", "1", "--bootstrap", "30", "--json"]) == 0
    out, err = capsys.readouterr()
    (line,) = out.splitlines()  # stdout: exactly one JSON object
    result = json.loads(line)
    assert result["image_size"] == 32 and result["estimator"] == "whittle" and result["band"] == [0.0, 32 / 6]
    assert set(result["estimators"]) == {f"{e}_{b}" for e in ("ls", "whittle") for b in BANDS}
    for entry in result["estimators"].values():
        assert {"m", "ci", "band"} <= set(entry) and entry["ci"][0] <= entry["m"] <= entry["ci"][1]
    assert result["misfit"] is True and result["misfit_reason"].startswith("a single power law")
    assert err.strip() == result["misfit_reason"]  # the misfit line goes to stderr with --json
    assert main([str(tmp_path / "pngs"), "--c2", "1", "--bootstrap", "0", "--band", "1", "4", "--estimator", "ls",
                 "--json"]) == 0
    narrow = json.loads(capsys.readouterr().out)
    assert narrow["band"] == [1.0, 4.0] and narrow["estimator"] == "ls"
    assert narrow["m"] == pytest.approx(fit_spectrum(_mean_power(tmp_path / "pngs"), c2=1.0, band=(1, 4)).m)


def _mean_power(folder):
    from PIL import Image

    from spd_tune.data.spectrum import image_spectra

    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))])
    return image_spectra(images).mean(dim=0)


def test_a_folder_of_mixed_sizes_still_asks_for_image_size(tmp_path, capsys):
    folder = tmp_path / "mixed"
    _save_pngs(folder, imaged_fields(3, 32, m=2.0, resample=None))
    from PIL import Image

    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(folder / "big.png")
    assert main([str(folder), "--bootstrap", "0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "32x32 and 48x48" in line and "--image-size" in line
    assert main([str(folder), "--bootstrap", "0", "--band", "3", "2"]) == 2
    assert "must satisfy 0 <= LO < HI" in capsys.readouterr().err
