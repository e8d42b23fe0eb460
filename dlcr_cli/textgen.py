"""Text generation with transformers, as describe and summarize share it: chat prompts,
seeded sampling with the reference's settings, and only the new tokens decoded."""

from __future__ import annotations

from typing import Any

from dlcr_cli.errors import ConfigError


def chat_prompt(owner: Any, messages: list[dict], model_id: str, setting: str) -> str:
    """`messages` rendered by the chat template of a processor or tokenizer, ready for the
    assistant's answer. A model without one is not a chat model: say which setting to change."""
    if not getattr(owner, "chat_template", None):
        raise ConfigError(f"model {model_id!r} has no chat template; set {setting} to a chat (instruct) model")
    return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def sampling(temperature: float, top_p: float | None = None) -> dict[str, Any]:
    """generate() options: the reference samples with temperature (and top_p) alone; the
    model's own generation config (top_k=50 and the like) must not add to it. 0 is greedy."""
    if temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}


def seed(value: int) -> None:
    """Seed torch's generators: the same input, settings and seed give the same text."""
    import torch

    torch.manual_seed(value)


def generate_text(model: Any, inputs: Any, decoder: Any, *, max_new_tokens: int, options: dict[str, Any],
                  pad_token_id: int | None) -> list[str]:
    """Generate for a left-padded batch and decode only the new tokens, stripped."""
    import torch

    with torch.inference_mode():
        # max_length=None: a checkpoint's own max_length (Llama-2-chat: 4096) would warn on every call.
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, max_length=None,
                             pad_token_id=pad_token_id, **options)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in decoder.batch_decode(new, skip_special_tokens=True)]


def to_model(inputs: Any, device: Any, dtype: Any) -> Any:
    """Move a processor's batch to the device; floating tensors (pixels) to the model's dtype."""
    import torch

    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            inputs[key] = value.to(device, dtype) if value.is_floating_point() else value.to(device)
    return inputs


def pad_token_id(tokenizer: Any) -> int | None:
    """The pad id for batches; chat models without one (Llama-2) pad with end-of-sequence."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id
