"""avctl: train and use audio-visual control LoRAs (AVControl) on LTX-2."""

from avctl.errors import AvctlError, BadInput, MissingWeights

__version__ = "0.1.0"
__all__ = ["AvctlError", "BadInput", "MissingWeights", "__version__"]
