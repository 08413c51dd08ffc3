"""avctl: train and use audio-visual control LoRAs (AVControl) on LTX-2."""

import logging

from avctl.errors import AvctlError, BadInput, MissingWeights

# torchao (for --quantize) is imported by diffusers whenever it is installed, and two import-time notices follow on
# every run: diffusers 0.42 looks for torchao classes that torchao 0.17+ moved (it only needs them to unpickle
# torchao checkpoints, which avctl never loads), and torch flags torchao's enum registrations as deprecated.
logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"
__all__ = ["AvctlError", "BadInput", "MissingWeights", "__version__"]
