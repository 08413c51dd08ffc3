"""Real-shape presets: LTX-2's own component configs (shipped as JSON beside this file, each naming its source),
built through diffusers' and transformers' own classes with seeded random weights and no download.

    shape      every part at full size (18.9B transformer, Gemma 3 12B, 1.2B video VAE, ...): for timing and memory
               on a GPU, and for `plan`, which builds it on `meta` (instant, no memory)
    shape:L    the transformer AND the text encoder cut to L blocks at full width; the connectors' input projection,
               whose width is (text encoder layers + 1) x hidden, follows. Real widths, head counts, RoPE and module
               names on a CPU.

Weights are drawn per tensor from a generator seeded by (seed, tensor name), so block 0 of `shape:1` equals block 0
of `shape`. They are materialised straight into the target device and dtype (bf16 unless asked otherwise), one tensor
at a time, so building never holds an fp32 copy. The tokenizer is a word-level stand-in padding to the pipeline's
1,024 tokens (Gemma's own tokenizer cannot be downloaded here): token ids differ from Gemma's, shapes do not.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from avctl.errors import BadUsage

SHAPE = "shape"
SHAPE_SEED = 0
CONFIG_DIR = Path(__file__).resolve().parent / "ltx2"
TEXT_MAX_LENGTH = 1024  # LTX2Pipeline's max_sequence_length default
TINY_MAX_LENGTH = 32  # LTX2Pipeline pads to 1024 with 128 connector registers; tiny pads to 32 with 8
SHAPE_COMPONENTS = ("transformer", "vae", "audio_vae", "vocoder", "connectors", "text_encoder", "tokenizer")


def is_shape(name: str | None) -> bool:
    return name is not None and (name == SHAPE or name.startswith(SHAPE + ":"))


def shape_blocks(name: str) -> int | None:
    """L for `shape:L`, None for the full `shape`; BadUsage for anything else that starts with `shape`."""
    if name == SHAPE:
        return None
    text = name.removeprefix(SHAPE + ":")
    if not text.isdigit() or not 1 <= int(text) <= 48:
        raise BadUsage(f"--model {name}: use 'shape' (the full LTX-2) or 'shape:L' with L transformer blocks, 1-48")
    return int(text)


def shape_configs(blocks: int | None = None) -> dict[str, dict[str, Any]]:
    """The component configs of `shape` (blocks None) or `shape:L`: transformer num_layers, Gemma's text layers and
    vision layers cut to L, the connectors' text_proj_in_factor set to the text layers + 1."""
    configs = {p.stem: json.loads(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.json"))}
    if blocks is not None:
        configs["transformer"]["num_layers"] = blocks
        text = configs["text_encoder"]["text_config"]
        text["num_hidden_layers"] = min(blocks, text["num_hidden_layers"])
        configs["text_encoder"]["vision_config"]["num_hidden_layers"] = blocks
        configs["connectors"]["text_proj_in_factor"] = text["num_hidden_layers"] + 1
    return configs


def component_classes() -> dict[str, Any]:
    """The diffusers / transformers class of each LTX-2 component, by component name."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
    from transformers import Gemma3ForConditionalGeneration

    return {
        "transformer": LTX2VideoTransformer3DModel,
        "vae": AutoencoderKLLTX2Video,
        "audio_vae": AutoencoderKLLTX2Audio,
        "vocoder": LTX2Vocoder,
        "connectors": LTX2TextConnectors,
        "text_encoder": Gemma3ForConditionalGeneration,
    }



# Word-level vocabulary of common English (and video-caption) words for the tiny tokenizer.
TINY_WORDS = """
a an the this that these those it its he she they we you i me him her them his their our your my
is are was were be been being am has have had do does did will would can could should may might must
and or but if then so because while when where what who which how not no yes all some any each every
of in on at to from by with without for about into onto over under above below between through across
near far up down out off inside outside behind front back left right top bottom side middle center around
one two three four five many few more most less other same different first last next new old young
big small large little tall short long wide narrow thick thin high low fast slow quick loud quiet soft hard
red orange yellow green blue purple pink brown black white gray grey gold silver dark bright light colorful
man woman person people boy girl child children baby family friend crowd group face hand hands head hair eyes
dog cat bird horse cow fish animal tree trees flower flowers grass leaf leaves forest garden park field
water river lake sea ocean beach wave waves rain snow sun moon sky cloud clouds wind fire smoke stone rock
mountain hill road street city town house home room door window wall floor table chair bed car bus train
boat bicycle plane ball box book phone camera screen light lamp kitchen food bread cup glass bottle
walk walks walking run runs running jump jumps jumping sit sits sitting stand stands standing look looks
looking talk talks talking speak speaks speaking sing sings singing dance dances dancing play plays playing
move moves moving turn turns turning roll rolls rolling fall falls falling fly flies flying swim swims
smile smiles smiling laugh laughs laughing cry cries open opens close closes hold holds holding throw
throws catch catches eat eats drink drinks write writes read reads watch watches drive drives ride rides
slowly quickly gently suddenly together alone again still very really just also only even
day night morning evening sunset sunrise time moment scene shot view video clip film frame music sound
voice noise song words silence background foreground closeup zoom pan tilt tracking angle focus blur
static handheld cinematic realistic natural warm cold golden shadow shadows reflection
"""
_TINY_SPECIALS = ("[PAD]", "[UNK]", "<bos>", "<eos>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
_TINY_PUNCTUATION = (".", ",", "!", "?", "'", '"', ":", ";", "-", "(", ")")


def tiny_tokenizer(extra_words: tuple[str, ...] = (), max_length: int = TINY_MAX_LENGTH) -> Any:
    """The tiny word-level tokenizer; `extra_words` extend its vocabulary (the pocket preset adds its world's
    words); `max_length` is what prompts are padded to (the real-shape presets pad to the pipeline's 1,024)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (*_TINY_SPECIALS, *_TINY_PUNCTUATION, *TINY_WORDS.split(), *extra_words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # Gemma's tokenizer prepends <bos> and appends nothing.
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="[UNK]",
        pad_token="[PAD]",
        padding_side="left",
        model_max_length=max_length,
    )



def _without_notes(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_module(component: str, config: dict[str, Any]) -> torch.nn.Module:
    """The component's real class from a config, with parameters on `meta` (buffers stay real: some, like RoPE
    frequencies or the VAE's latent statistics, are computed or set at construction)."""
    from accelerate import init_empty_weights

    if component != "text_encoder":
        with init_empty_weights(include_buffers=False):
            return component_classes()[component].from_config(_without_notes(config))
    from transformers import Gemma3Config

    with init_empty_weights(include_buffers=False):
        model = component_classes()["text_encoder"](Gemma3Config(**copy.deepcopy(config)))
    # Gemma's lm_head is its embedding table (tie_word_embeddings); a meta build leaves them apart. Tied outside
    # init_empty_weights, which would re-create the assigned parameter.
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def materialize(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, seed: int, prefix: str) -> None:
    """Give every `meta` parameter seeded random values on `device` in `dtype`: matrices and kernels uniform in
    ±1/sqrt(fan_in) (nn.Linear's own default range), 1-D weights (norm scales) 1, biases 0. Tied parameters (Gemma's
    lm_head and embedding table) stay one tensor."""
    done: dict[int, torch.nn.Parameter] = {}
    for full_name, param in list(module.named_parameters(remove_duplicate=False)):
        owner_name, _, leaf = full_name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if id(param) in done:
            owner._parameters[leaf] = done[id(param)]
            continue
        if param.device.type != "meta":
            continue
        value = torch.empty(param.shape, device=device, dtype=dtype)
        if param.ndim >= 2:
            fan_in = math.prod(param.shape[1:])
            bound = 1.0 / math.sqrt(max(1, fan_in))
            generator = torch.Generator(device=device).manual_seed(_tensor_seed(seed, f"{prefix}.{full_name}"))
            value.uniform_(-bound, bound, generator=generator)
        elif leaf == "bias":
            value.zero_()
        else:
            value.fill_(1.0)
        new = torch.nn.Parameter(value, requires_grad=param.requires_grad)
        done[id(param)] = new
        owner._parameters[leaf] = new


def stand_in_tokenizer() -> Any:
    return tiny_tokenizer(max_length=TEXT_MAX_LENGTH)


def build_shape(
    name: str, wanted: set[str], device: torch.device, dtype: torch.dtype, meta: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The wanted parts of `shape` / `shape:L` (parameters on `meta` when `meta`), and the canonical configs of all
    parts (for the config hash)."""
    blocks = shape_blocks(name)
    configs = shape_configs(blocks)
    parts: dict[str, Any] = {}
    for component in SHAPE_COMPONENTS:
        if component not in wanted:
            continue
        if component == "tokenizer":
            parts[component] = stand_in_tokenizer()
            continue
        module = build_module(component, configs[component])
        if not meta:
            materialize(module, device, dtype, SHAPE_SEED, component)
        parts[component] = module
    canonical: dict[str, Any] = {"preset": name, "seed": SHAPE_SEED, "tokenizer_max_length": TEXT_MAX_LENGTH}
    canonical.update({c: _without_notes(cfg) for c, cfg in configs.items()})
    return parts, canonical


def parameter_counts(blocks: int | None = None) -> dict[str, int]:
    """Parameters per component of `shape` / `shape:L`, counted on `meta`."""
    configs = shape_configs(blocks)
    return {c: sum(p.numel() for p in build_module(c, configs[c]).parameters())
            for c in SHAPE_COMPONENTS if c != "tokenizer"}
