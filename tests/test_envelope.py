"""One RMS envelope for sonification and eval: whole 20 ms windows only, the tail past the last one dropped."""

from __future__ import annotations

import numpy as np

from avctl.audio import rms_envelope, sonify
from avctl.metrics import rms_envelope_db

SR = 48_000
WINDOW = 960  # 20 ms at 48 kHz


def test_the_partial_tail_window_is_dropped_by_both_users():
    audio = np.concatenate([np.full(WINDOW, 0.5), np.full(WINDOW // 2, 0.1)])[None].astype(np.float32)
    env = rms_envelope(audio, SR)
    assert env.shape == (1,) and np.isclose(env[0], 0.5)
    db = rms_envelope_db(audio, SR)
    assert db.shape == (1,) and np.isclose(db[0], 20 * np.log10(0.5))


def test_sonify_keeps_the_length_and_holds_the_last_level_over_the_tail():
    audio = np.concatenate([np.full(4 * WINDOW, 0.05), np.full(2 * WINDOW, 0.4), np.full(WINDOW // 2, 0.1)])
    out = sonify(audio[None].astype(np.float32), SR, channels=2)
    assert out.shape == (2, len(audio))
    tail = out[0, 6 * WINDOW:]
    rms = float(np.sqrt(np.mean(tail.astype(np.float64) ** 2)))
    assert abs(rms - 0.4) < 0.05  # the last whole window's level: not silence, not the partial window's 0.1
