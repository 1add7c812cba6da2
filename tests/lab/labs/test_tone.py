"""Tone detection on synthetic WAV files: the frequency is found, silence is skipped."""

from __future__ import annotations

import array
import math
import wave
from pathlib import Path

import pytest

from labs.tone import ToneError, analyse, goertzel_power, read_wav


def _write(
    path: Path,
    freq: float,
    *,
    rate: int = 8000,
    seconds: float = 1.0,
    silence: float = 0.0,
    channels: int = 1,
    amp: float = 8000,
) -> Path:
    samples = array.array("h", [0] * int(silence * rate))
    samples.extend(
        int(amp * math.sin(2 * math.pi * freq * i / rate)) for i in range(int(seconds * rate))
    )
    if channels == 2:
        samples = array.array("h", [s for s in samples for _ in (0, 1)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


@pytest.mark.parametrize(
    ("freq", "rate"), [(440, 8000), (660, 8000), (1000, 16000), (523.25, 48000)]
)
def test_dominant_frequency(tmp_path: Path, freq: float, rate: int) -> None:
    tone = analyse(_write(tmp_path / "t.wav", freq, rate=rate, silence=0.5))
    assert abs(tone.frequency - freq) < 1.0
    assert tone.purity > 0.95
    assert -16 < tone.rms_dbfs < -14  # amplitude 8000: 20*log10(8000/sqrt(2)/32768)


def test_stereo_uses_the_first_channel(tmp_path: Path) -> None:
    assert abs(analyse(_write(tmp_path / "s.wav", 660, channels=2)).frequency - 660) < 1


def test_silence_and_short_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ToneError, match="only silence"):
        analyse(_write(tmp_path / "quiet.wav", 440, amp=0))
    with pytest.raises(ToneError, match="samples of sound"):
        analyse(_write(tmp_path / "short.wav", 440, seconds=0.12))
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    with pytest.raises(ToneError, match="not a PCM WAV"):
        analyse(tmp_path / "junk.wav")


def test_goertzel_separates_the_two_tones(tmp_path: Path) -> None:
    rate, samples = read_wav(_write(tmp_path / "g.wav", 440))
    assert goertzel_power(samples, rate, 440) > 1000 * goertzel_power(samples, rate, 660)
