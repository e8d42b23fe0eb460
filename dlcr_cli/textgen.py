"""Text generation with transformers, as describe (a VLM) and summarize (an LLM) share it:
the model and its processor from the cache, chat prompts, seeded sampling with the
reference's settings, left-padded batches, and only the new tokens decoded."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from dlcr_cli.errors import ConfigError


@dataclass
class Generator:
    model: Any
    processor: Any
    """The processor (VLM) or tokenizer (LLM) that makes the model's inputs and decodes."""
    model_id: str
    setting: str
    """The setting that names the model, for messages."""
    device: Any
    dtype: Any
    max_new_tokens: int
    options: dict[str, Any]
    pad_token_id: int | None

    @classmethod
    def load(cls, kind: str, classes: tuple[str, str], model_id: str, *, setting: str, device: Any, dtype: Any,
             max_new_tokens: int, temperature: float, top_p: float | None = None, seed: int = 0,
             trust_remote_code: bool = False, offload_idle: bool = True) -> Generator:
        """The model (transformers Auto classes `classes`: model, processor) from the model
        cache, with torch's generators seeded: the same input, settings and seed give the
        same text."""
        import torch

        from dlcr_cli.cache import CACHE

        bundle = CACHE.get(kind, model_id, dtype=dtype, device=device, setting=setting, offload_idle=offload_idle,
                           load=partial(_load, *classes, model_id, device, dtype, trust_remote_code))
        torch.manual_seed(seed)
        return cls(bundle.model, bundle.processor, model_id, setting, device, dtype, max_new_tokens,
                   sampling(temperature, top_p), _pad_token_id(bundle.processor))

    def chat(self, messages: list[dict]) -> str:
        """`messages` rendered by the chat template, ready for the assistant's answer. A model
        without one is not a chat model: say which setting to change."""
        if not getattr(self.processor, "chat_template", None):
            raise ConfigError(f"model {self.model_id!r} has no chat template; set {self.setting} to a chat (instruct) model")
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, inputs: Any) -> list[str]:
        """Answers to a left-padded batch (the processor's output), new tokens only, stripped."""
        import torch

        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):  # pixels to the model's dtype, ids stay integers
                inputs[key] = value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
        with torch.inference_mode():
            # max_length=None: a checkpoint's own max_length (Llama-2-chat: 4096) would warn on every call.
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, max_length=None,
                                      pad_token_id=self.pad_token_id, **self.options)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]


def sampling(temperature: float, top_p: float | None = None) -> dict[str, Any]:
    """generate() options: the reference samples with temperature (and top_p) alone; the
    model's own generation config (top_k=50 and the like) must not add to it. 0 is greedy."""
    if temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}


def _pad_token_id(processor: Any) -> int | None:
    """The pad id for batches; chat models without one (Llama-2) pad with end-of-sequence."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


def _load(model_class: str, processor_class: str, model_id: str, device: Any, dtype: Any,
          trust_remote_code: bool) -> Any:
    import transformers

    from dlcr_cli.cache import WithProcessor

    processor = getattr(transformers, processor_class).from_pretrained(model_id, trust_remote_code=trust_remote_code)
    getattr(processor, "tokenizer", processor).padding_side = "left"  # every row continues at its end
    model = getattr(transformers, model_class).from_pretrained(
        model_id, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return WithProcessor(model.eval().to(device), processor)
