"""Who is talking (paper §7): the reference is coloured face boxes on black (coloured while that speaker talks,
grey when silent) with the mixed audio of all speakers; the only LoRA that trains every module, and it trains both
streams. No extractor ships yet."""

from __future__ import annotations

from modalities.base import ALL_GROUPS, Modality

WHO_IS_TALKING = Modality(
    name="who-is-talking",
    category="audio-visual",
    description="Make the right person talk: face boxes coloured by who speaks, with the speech audio.",
    streams=("video",),
    loss_streams=("video", "audio"),
    targets=ALL_GROUPS,
    rank=128,
    steps=3500,
    train_samples=500,
    downscale=1,
    context="noised",
    extractor=None,
    extractor_note="planned: face boxes (RetinaFace, or OpenCV Haar offline) coloured by voice "
    "activity (Silero VAD), on black",
)
