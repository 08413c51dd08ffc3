"""Audio intensity (paper §7): the reference audio is a sonification of the original audio's energy envelope; only
the audio branch trains and the video is clean context (t = 0).

The rule, exactly (`avctl.audio.sonify`): the clip's audio (48 kHz stereo as `avctl prepare` reads it) is averaged
to mono; its RMS is taken over consecutive whole 20 ms windows (the windows `avctl eval` measures envelopes with;
samples after the last whole window keep its level); a 500 Hz sine (10 periods per window) is scaled so that its RMS
in each window equals that window's RMS, with gain changes ramped over 5 ms; the whole signal is scaled down once if
a peak would clip. The same signal goes to both channels. Weightless and deterministic. A clip without an audio
stream is skipped with a one-line reason.
"""

from __future__ import annotations

from avctl.audio import ENVELOPE_WINDOW_S, SONIFY_CARRIER_HZ, require_audio, sonify
from avctl.errors import BadInput
from avctl.modalities.base import Clip, Control, EvalInput, FidelityResult, Modality


class SonifiedEnvelopeExtractor:
    backend = "rms-sonification"
    version = (f"2 ({ENVELOPE_WINDOW_S * 1000:g} ms RMS over whole windows, {SONIFY_CARRIER_HZ:g} Hz sine carrier, "
               "5 ms ramps)")

    def __call__(self, clip: Clip) -> Control:
        audio = require_audio(clip.audio, "audio-intensity", clip.key)
        assert clip.sample_rate is not None
        return Control(audio=sonify(audio, clip.sample_rate, channels=max(1, audio.shape[0])),
                       sample_rate=clip.sample_rate)


def envelope_fidelity(inp: EvalInput) -> FidelityResult:
    """`avctl eval` for an audio control: audio_envelope_correlation of the control's and the output's audio (20 ms
    RMS envelopes in dB at 16 kHz mono), with chance and skill against the time-reversed control."""
    from avctl.media import read_audio
    from avctl.metrics import ENVELOPE_SAMPLE_RATE, audio_envelope_correlation, envelope_metric
    from avctl.skill import Fidelity, reverse_audio

    result = FidelityResult()
    control = read_audio(inp.control, ENVELOPE_SAMPLE_RATE, channels=1)
    output = read_audio(inp.video, ENVELOPE_SAMPLE_RATE, channels=1)
    if control is None or output is None:
        result.missing["audio_envelope_correlation"] = f"{inp.control if control is None else inp.video} has no " \
                                                       "audio stream"
        return result
    try:
        value = audio_envelope_correlation(control, output, ENVELOPE_SAMPLE_RATE)
    except BadInput as exc:
        result.missing["audio_envelope_correlation"] = str(exc)
        return result
    result.metrics["audio_envelope_correlation"] = value
    result.chance["audio_envelope_correlation"] = Fidelity(envelope_metric, control, output, value, str(inp.control),
                                                           mirror=reverse_audio)
    return result


ENVELOPE_FIDELITY_NOTE = "audio_envelope_correlation: the control's vs the output's 20 ms RMS envelope (dB)"

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
    extractor=SonifiedEnvelopeExtractor,
    extractor_note="the 20 ms RMS energy envelope of the clip's audio, sonified as a 500 Hz tone whose loudness "
    "follows it (weightless); needs an audio stream",
    fidelity=envelope_fidelity,
    fidelity_note=ENVELOPE_FIDELITY_NOTE,
)
