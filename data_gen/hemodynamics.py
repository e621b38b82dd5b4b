"""Neural modes through a haemodynamic response, sampled at a scanner TR, without a per-timestep loop.

The simulator's neural state follows a stable linear stochastic system (Ornstein-Uhlenbeck)
``dx = A x dt + dW`` with a symmetric ``A = (W - I) / tau``. In the eigenbasis of ``W`` the modes are independent
one-dimensional OU processes with decay rates ``r_k = (1 - mu_k) / tau``. Each mode is discretised exactly at a
fine step ``h = TR / k`` (an AR(1) with coefficient ``exp(-r_k h)``), convolved with nilearn's HRF sampled at
``h``, and kept every ``k``-th sample. Those three linear steps are applied in the frequency domain: the power
spectrum of the fine process (AR(1) spectrum x |HRF|^2) is folded onto the TR grid (what sampling does), and a
sample is drawn as white noise shaped by the square root of that spectrum. The result has exactly the
distribution of running the recursion at the fine step on a circular (periodic) span; the caller simulates a
padded span and keeps a part of it, so the wrap-around never shows. Cost: O(fine samples x regions) per
subject for the spectrum, O(timepoints x regions) for the draw, instead of a Python loop over fine steps with a
regions x regions product in each (see ``simulate.simulate_euler`` for that reference).
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import FmriInputError

HRF_LENGTH_S = 32.0
#: Frequency bands whose HRF power is below this fraction of the peak are left out of the fold.
BAND_TOLERANCE = 1e-10


def hrf_kernel(dt: float, model: str = "glover", length_s: float = HRF_LENGTH_S) -> np.ndarray:
    """nilearn's canonical HRF sampled every ``dt`` seconds (sums to 1)."""
    from nilearn.glm.first_level import glover_hrf, spm_hrf

    funcs = {"glover": glover_hrf, "spm": spm_hrf}
    if model not in funcs:
        raise FmriInputError(f"Unknown HRF model '{model}'", fix="use 'glover' or 'spm'")
    kernel = funcs[model](dt, oversampling=1, time_length=length_s)
    return np.asarray(kernel, dtype=np.float64)


class ModeSampler:
    """Draws HRF-filtered OU modes on one TR grid; built once per (TR, span), reused for every subject."""

    def __init__(self, tr: float, n_samples: int, dt: float = 0.1, hrf_model: str = "glover") -> None:
        if tr <= 0 or dt <= 0:
            raise FmriInputError(f"TR {tr} s and step {dt} s must be positive", fix="give positive values")
        self.tr = float(tr)
        self.n_samples = int(n_samples)
        self.oversample = max(1, int(round(tr / dt)))
        self.dt = self.tr / self.oversample
        n_fine = self.n_samples * self.oversample
        hrf = hrf_kernel(self.dt, hrf_model)
        if hrf.size > n_fine:
            raise FmriInputError(
                f"A span of {self.n_samples} samples at TR {tr} s is shorter than the HRF",
                fix=f"simulate at least {int(np.ceil(HRF_LENGTH_S / tr))} timepoints",
            )
        hrf_power = np.abs(np.fft.fft(hrf, n_fine)) ** 2  # full spectrum: folding needs every alias
        cos = np.cos(2.0 * np.pi * np.fft.fftfreq(n_fine))
        # Sampling at TR folds k frequency bands onto one. The HRF is smooth, so most bands carry less than
        # 1e-10 of its peak power; skipping them changes the spectrum by less than that and saves ~5x.
        bands = hrf_power.reshape(self.oversample, self.n_samples)
        keep = bands.max(axis=1) > BAND_TOLERANCE * hrf_power.max()
        self._hrf_power = bands[keep][:, :, None]
        self._cos = cos.reshape(self.oversample, self.n_samples)[keep][:, :, None]

    def spectra(self, rates: np.ndarray) -> np.ndarray:
        """Power spectrum ``(n_samples, modes)`` on the TR grid of modes with decay ``rates`` (1/s, > 0)."""
        rates = np.asarray(rates, dtype=np.float64)
        a = np.exp(-rates * self.dt)
        innovation = (1.0 - a**2) / (2.0 * rates)  # exact OU discretisation, unit diffusion
        ar_power = 1.0 / ((1.0 + a**2) - (2.0 * a) * self._cos)  # (bands, n_samples, modes)
        folded = np.einsum("bsm,bsm->sm", ar_power, np.broadcast_to(self._hrf_power, ar_power.shape))
        return folded * (innovation / self.oversample)

    def sample(self, rng: np.random.Generator, spectra: np.ndarray) -> np.ndarray:
        """One draw ``(n_samples, modes)`` of stationary Gaussian series with the given spectra."""
        noise = rng.standard_normal(spectra.shape)
        shaped = np.fft.rfft(noise, axis=0) * np.sqrt(spectra[: self.n_samples // 2 + 1])
        return np.fft.irfft(shaped, n=self.n_samples, axis=0)

    @staticmethod
    def variances(spectra: np.ndarray) -> np.ndarray:
        """Stationary variance of each mode (the mean of its spectrum)."""
        return spectra.mean(axis=0)
