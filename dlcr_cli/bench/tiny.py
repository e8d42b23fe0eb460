"""Tiny random-weight hub-style checkpoints, built offline in ~0.1 s each (plus the one-time
import of the transformers/diffusers model modules, a few seconds): what `dlcr bench smoke`
runs every model-backed stage on, and what the tests load through the CLI's real
`from_pretrained` code. Nothing is downloaded.

`build_tiny_llava` saves a LLaVA-1.5-style image-text-to-text model with its processor,
`build_tiny_llama` a Llama causal LM with a Llama-2-chat tokenizer, `build_tiny_segformer` a
SegFormer predicting ATR labels, `build_tiny_inpaint` a Stable-Diffusion inpainting pipeline,
`build_tiny_resnet` a bottleneck ResNet classifier; all as safetensors with `save_pretrained`.
The weights are random (seeded), so outputs are noise (generated text gibberish) but
deterministic. Heavy imports happen inside the builders.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "IMAGE_TOKEN", "LLAMA2_CHAT_TEMPLATE", "LLAVA_CHAT_TEMPLATE", "build_tiny_inpaint", "build_tiny_llama",
    "build_tiny_llava", "build_tiny_resnet", "build_tiny_segformer", "build_tiny_dinov2", "build_tiny_swin",
]

# The chat template of llava-hf/llava-1.5-7b-hf: `USER: <image>\n{text} ASSISTANT:`.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# The chat template of meta-llama/Llama-2-7b-chat-hf: `<s>[INST] {content} [/INST]`.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
IMAGE_TOKEN = "<image>"
_PRINTABLE = "abcdefghijklmnopqrstuvwxyz ,"
_TINY = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
# Large random weights in the language model make its greedy output depend visibly on the prompt
# and the image (with the usual 0.02, every image gets the same text).
_TEXT_INIT = 0.5


def _tokenizer(extra_specials: tuple[str, ...] = (), *, pad: bool = True):
    """A byte-level BPE tokenizer with no merges: the 256 byte characters plus the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = tuple(t for t in _SPECIALS if pad or t != "<pad>") + extra_specials
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Like the Llama tokenizers: a bos token in front of every text unless add_special_tokens=False.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>" if pad else None,
        additional_special_tokens=list(extra_specials) or None,
        padding_side="left",
    )


def _printable_head(model, tokenizer) -> None:
    """Make greedy decoding emit only lowercase letters, spaces and commas (no eos, no control bytes).

    The other tokens' output rows are zeroed (logit 0) while the allowed ones are random with a
    large spread (initializer_range 0.5), so the argmax is an allowed token; sampling can still
    pick another one, rarely.
    """
    import torch

    allowed = torch.zeros(len(tokenizer), dtype=torch.bool)
    allowed[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(_PRINTABLE))] = True
    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        weight[~allowed] = 0.0


def _ids(tokenizer) -> dict:
    return {
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def build_tiny_llava(path: Path, *, printable: bool = True) -> Path:
    """Save a tiny LLaVA-1.5-style model and processor to `path` (created); returns `path`.

    16x16 images in 4x4 patches, so 16 `<image>` tokens per image; the CLIP image processor
    (the PIL/numpy one: no torchvision) resizes the shortest edge to 16 and centre-crops 16x16.
    The tokenizer prepends `<s>` like Llama's. With `printable` (the default) greedy decoding
    only ever yields lowercase letters, spaces and commas, and never eos; without it, any byte.
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer((IMAGE_TOKEN,))
    ids = _ids(tokenizer)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=16, patch_size=4, num_channels=3, projection_dim=32, **_TINY,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), num_key_value_heads=4, max_position_embeddings=512,
            initializer_range=_TEXT_INIT, **_TINY, **ids,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=16,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        **ids,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    if printable:
        _printable_head(model, tokenizer)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(path, safe_serialization=True)

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
        do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True, do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
        num_additional_image_tokens=1, vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(path)
    return path


def build_tiny_llama(path: Path, *, printable: bool = True, like_llama2_chat: bool = False) -> Path:
    """Save a tiny Llama causal LM and its Llama-2-chat tokenizer to `path` (created); returns `path`.

    The chat template puts the bos token in the text and the tokenizer prepends one too (like
    Llama's), so tokenize rendered chats with `add_special_tokens=False`. `printable`: as in
    `build_tiny_llava`. `like_llama2_chat` copies two quirks of meta-llama/Llama-2-7b-chat-hf:
    the tokenizer has no pad token, and the generation config samples by default
    (do_sample, temperature 0.6, top_p 0.9, max_length 4096, pad_token_id 0).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(pad=not like_llama2_chat)
    tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    ids = _ids(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer), num_key_value_heads=4, max_position_embeddings=512,
        initializer_range=_TEXT_INIT, **_TINY, **ids,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    if printable:
        _printable_head(model, tokenizer)
    if like_llama2_chat:
        model.generation_config = GenerationConfig(
            bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=0,
            do_sample=True, temperature=0.6, top_p=0.9, max_length=4096,
        )
    else:
        model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_inpaint(path: Path) -> Path:
    """Save a tiny Stable-Diffusion inpainting pipeline (9-channel UNet, two-block VAE, CLIP
    text encoder, PNDM scheduler, no safety checker) to `path`, loadable with
    `AutoPipelineForInpainting.from_pretrained(path)`; returns `path`. The architecture lives
    in `dlcr_cli.bench.inpaint` (arch "tiny"), next to the full-size one `dlcr bench` times."""
    from dlcr_cli.bench.inpaint import build_inpaint_pipeline

    return build_inpaint_pipeline(Path(path), arch="tiny")


def build_tiny_resnet(path: Path) -> Path:
    """A bottleneck ResNet with an image-classification head, saved like microsoft/resnet-50."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                          layer_type="bottleneck", num_labels=3)
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(path)
    return path


def build_tiny_segformer(path: Path) -> Path:
    """Save a two-block SegFormer predicting the ATR labels (the "clothes" fine-tunes' label
    set, so the mask stage identifies it) to `path`; returns `path`."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from dlcr_cli.labels import ATR

    names = {i: name.capitalize() for i, name in enumerate(ATR)}
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
        decoder_hidden_size=16, num_labels=len(ATR), id2label=names,
        label2id={v: k for k, v in names.items()},
    )
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).save_pretrained(path, safe_serialization=True)
    return Path(path)


def build_tiny_dinov2(path: Path) -> Path:
    """A DINOv2 backbone (its `mask_token` is a parameter no forward of unmasked images uses:
    DDP's unused-parameter case)."""
    import torch
    from transformers import Dinov2Backbone, Dinov2Config

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                          patch_size=8, image_size=64, out_features=["stage2"])
    Dinov2Backbone(config).save_pretrained(path)
    return Path(path)


def build_tiny_swin(path: Path) -> Path:
    """A Swin backbone (its final layernorm is unused by the backbone's feature maps)."""
    import torch
    from transformers import SwinBackbone, SwinConfig

    torch.manual_seed(0)
    config = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2,
                        out_features=["stage2"])
    SwinBackbone(config).save_pretrained(path)
    return Path(path)
