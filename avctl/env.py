"""Every environment variable avctl reads, declared once with its help text; `avctl --help` lists them
(`help_text`). Code reads a variable through its declaration (`MODEL.get()`), never `os.environ` by name."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    help: str
    set_by: str = "you"  # who sets it: the user, or the launcher / library named here

    def get(self, default: str | None = None) -> str | None:
        """The variable's value; unset or empty gives `default`."""
        return os.environ.get(self.name) or default

    def is_set(self) -> bool:
        return self.name in os.environ

    def set_default(self, value: str) -> None:
        """Set it for this process and its children unless it is already set."""
        os.environ.setdefault(self.name, value)


MODEL = EnvVar("AVCTL_MODEL", "the model when --model is not given: a diffusers-format LTX-2 folder, a hub id, "
               "tiny, pocket or shape[:L]. Unset: Lightricks/LTX-2.")
HOME = EnvVar("AVCTL_HOME", "a folder searched after the current one: weights/BACKEND/ for extractor weights, "
              "runs/NAME/lora.safetensors for a LoRA given by name.")
NO_PROGRESS = EnvVar("AVCTL_NO_PROGRESS", "1 hides the progress bars.")
OMP_NUM_THREADS = EnvVar("OMP_NUM_THREADS", "torch's CPU threads; tiny and pocket run on one unless it is set, and an "
                         "exact resume needs the count the state was saved with.")
HF_HUB_CACHE = EnvVar("HF_HUB_CACHE", "where hub models are looked up (never downloaded).", "Hugging Face")
HUGGINGFACE_HUB_CACHE = EnvVar("HUGGINGFACE_HUB_CACHE", "the older name of HF_HUB_CACHE.", "Hugging Face")
HF_HOME = EnvVar("HF_HOME", "the hub cache is HF_HOME/hub when HF_HUB_CACHE is unset.", "Hugging Face")
HF_HUB_DISABLE_PROGRESS_BARS = EnvVar("HF_HUB_DISABLE_PROGRESS_BARS", "avctl sets it to 1 unless it is set, so only "
                                      "avctl's own progress bars show; 0 shows Hugging Face's too.")
WORLD_SIZE = EnvVar("WORLD_SIZE", "the number of training processes.", "torchrun / accelerate launch")
RANK = EnvVar("RANK", "this process's rank.", "torchrun / accelerate launch")
LOCAL_RANK = EnvVar("LOCAL_RANK", "this process's GPU on its machine.", "torchrun / accelerate launch")
ACCELERATE_USE_FSDP = EnvVar("ACCELERATE_USE_FSDP", "true: train with FSDP2 instead of DDP.", "accelerate launch")
FSDP_TRANSFORMER_CLS_TO_WRAP = EnvVar("FSDP_TRANSFORMER_CLS_TO_WRAP", "the block classes FSDP shards one by one.",
                                      "accelerate launch")
FSDP_RESHARD_AFTER_FORWARD = EnvVar("FSDP_RESHARD_AFTER_FORWARD", "false or SHARD_GRAD_OP keeps parameters "
                                    "gathered between forward and backward.", "accelerate launch")

VARIABLES = (MODEL, HOME, NO_PROGRESS, OMP_NUM_THREADS, HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME,
             HF_HUB_DISABLE_PROGRESS_BARS, WORLD_SIZE,
             RANK, LOCAL_RANK, ACCELERATE_USE_FSDP, FSDP_TRANSFORMER_CLS_TO_WRAP, FSDP_RESHARD_AFTER_FORWARD)


def model_name(model: str | None) -> str | None:
    """`--model` when given, else $AVCTL_MODEL, else None (the backbone's default, LTX-2)."""
    return model or MODEL.get()


def help_text() -> str:
    """The variables a user sets, for `avctl --help`: one paragraph each, so plain and markdown help both keep them
    apart."""
    return "\n\n".join(["Environment variables:", *(f"{v.name}: {v.help}" for v in VARIABLES if v.set_by == "you")])
