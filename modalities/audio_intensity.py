"""Audio intensity (paper §7): the reference audio is a sonification of the original audio's energy envelope;
only the audio branch trains and the video is clean context. No extractor ships yet."""

from __future__ import annotations

from modalities.base import Modality

AUDIO_INTENSITY = Modality(
    name="audio-intensity",
    category="audio",
    description="Generate audio that follows a loudness envelope, for a given video.",
    streams=("audio",),
    targets=("A.SA", "A.FF", "V→A"),
    rank=128,
    steps=2000,
    train_samples=7800,
    downscale=1,
    context="clean",
    extractor=None,
    extractor_note="planned: the RMS energy envelope (20 ms windows) sonified as the reference "
    "audio (weightless)",
)
