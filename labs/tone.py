"""What frequency does a recording hold? Pure Python (stdlib `wave`, a radix-2 FFT).

`analyse(path)` skips the leading silence (a call's recording starts before the first RTP
packet arrives), takes up to `window` samples of the sound, applies a Hann window and
returns the peak of the magnitude spectrum, refined by parabolic interpolation between the
neighbouring bins (resolution well under 1 Hz at 8 kHz and 8192 points), with the share of
the spectrum's energy near that peak, so a test can tell a clean tone from noise:

    assert abs(analyse(rec).frequency - 440) < 5 and analyse(rec).purity > 0.5

`goertzel_power` measures one frequency only (e.g. "is 660 Hz absent?").
"""

from __future__ import annotations

import array
import cmath
import math
import sys
import wave
from dataclasses import dataclass
from pathlib import Path


class ToneError(ValueError):
    """The file is not a 16-bit PCM WAV, or holds no sound to analyse."""


@dataclass(frozen=True)
class Tone:
    frequency: float  # Hz, the dominant one
    purity: float  # share of spectral energy within +-2 bins of the peak, 0..1
    rms_dbfs: float  # level of the analysed stretch
    seconds: float  # length of the analysed stretch


def read_wav(path: str | Path) -> tuple[int, array.array[int]]:
    """(sample rate, first channel as signed 16-bit samples)."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise ToneError(f"{path}: {8 * w.getsampwidth()}-bit samples, need 16-bit")
            rate, channels = w.getframerate(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ToneError(f"{path}: not a PCM WAV file ({exc})") from None
    samples = array.array("h")
    samples.frombytes(raw[: len(raw) - len(raw) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    if channels > 1:
        samples = samples[::channels]
    return rate, samples


def _fft(values: list[complex]) -> list[complex]:
    """Iterative radix-2 FFT; len(values) must be a power of two."""
    n = len(values)
    out = list(values)
    j = 0
    for i in range(1, n):  # bit-reversal permutation
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            out[i], out[j] = out[j], out[i]
    size = 2
    while size <= n:
        step = cmath.exp(-2j * math.pi / size)
        half = size // 2
        for start in range(0, n, size):
            w = 1 + 0j
            for k in range(start, start + half):
                t = w * out[k + half]
                out[k + half] = out[k] - t
                out[k] += t
                w *= step
        size *= 2
    return out


def _sound_start(samples: array.array[int], threshold: int) -> int | None:
    for i, s in enumerate(samples):
        if abs(s) > threshold:
            return i
    return None


def analyse(
    path: str | Path, *, window: int = 8192, threshold: int = 300, skip: float = 0.1
) -> Tone:
    """The dominant frequency of the sound in a WAV file (see the module docstring)."""
    if window & (window - 1):
        raise ValueError("window must be a power of two")
    rate, samples = read_wav(path)
    start = _sound_start(samples, threshold)
    if start is None:
        raise ToneError(f"{path}: only silence ({len(samples)} samples below +-{threshold})")
    start += int(skip * rate)  # jitter-buffer fill and codec start-up
    chunk = samples[start : start + window]
    if len(chunk) < rate // 10:
        raise ToneError(f"{path}: only {len(chunk)} samples of sound, need {rate // 10}")
    n = len(chunk)
    hann = [0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1)) for i in range(n)]
    values = [complex(chunk[i] * hann[i]) for i in range(n)] + [0j] * (window - n)
    mags = [abs(c) for c in _fft(values)[: window // 2]]
    mags[0] = 0.0  # DC
    peak = max(range(1, len(mags) - 1), key=mags.__getitem__)
    a, b, c = mags[peak - 1], mags[peak], mags[peak + 1]
    denom = a - 2 * b + c
    offset = 0.5 * (a - c) / denom if denom else 0.0
    energy = sum(m * m for m in mags) or 1.0
    near = sum(m * m for m in mags[max(peak - 2, 0) : peak + 3])
    rms = math.sqrt(sum(s * s for s in chunk) / n)
    return Tone(
        frequency=(peak + offset) * rate / window,
        purity=near / energy,
        rms_dbfs=20 * math.log10(max(rms, 1e-9) / 32768),
        seconds=n / rate,
    )


def dominant_frequency(path: str | Path) -> float:
    return analyse(path).frequency


def goertzel_power(samples: array.array[int], rate: int, freq: float) -> float:
    """Power of one frequency in `samples`, normalised by the sample count squared."""
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / max(len(samples), 1) ** 2
