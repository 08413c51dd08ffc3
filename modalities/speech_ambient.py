"""Speech to ambient (paper §7): the reference is the isolated speech track, the target the full audio with its
ambience. Trained A→AV (the video is generated alongside, no video loss); AV→A (replace a given video's audio) works
at generation by giving the video as clean context. No extractor ships yet."""

from __future__ import annotations

from modalities.base import Modality

SPEECH_AMBIENT = Modality(
    name="speech-ambient",
    category="audio",
    description="Add the ambience (room tone, background sound) around a speech track.",
    streams=("audio",),
    targets=("A.SA", "A.FF", "V→A"),
    rank=128,
    steps=5000,
    train_samples=2600,
    downscale=1,
    context="noised",
    extractor=None,
    extractor_note="planned: speech isolated from the mix (Demucs, or DeepFilterNet3 offline) "
    "as the reference audio",
)
