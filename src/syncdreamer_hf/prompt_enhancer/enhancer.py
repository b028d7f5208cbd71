"""Cross-modal prompt enhancer (paper §3.3): a Qwen2-VL family model turns a user's short prompt and what it sees in
the reference image into a concrete motion instruction for the video model.

Two steps, each one `generate` call: `extract_attributes` reads clothing, background, objects, body pose and
implicit actions from the image as JSON; `enhance` merges them with the prompt. An optional PEFT LoRA adapter
(trained with `training_scripts/train_prompt_enhancer.py`) lives in the `adapter/` subfolder.

The class is a diffusers `ModelMixin` so that a `DiffusionPipeline` can hold it as a component: `save_pretrained`
and `from_pretrained` below are the ones the pipeline calls, and `.to()` / `.device` / `.dtype` work as usual.
"""

import json
import os
import re

import PIL.Image
import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin
from transformers import AutoConfig, AutoModelForImageTextToText

from ..media import load_image
from ..model_cards import PLACEHOLDER_REPO_ID, ModelCardMixin, render_component_card
from .processing import load_processor
from .rewards import ATTRIBUTE_KEYS

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
ADAPTER_SUBFOLDER = "adapter"
ATTRIBUTE_INSTRUCTION = (
    "Describe the person in the image as JSON with the keys "
    + ", ".join(f'"{key}"' for key in ATTRIBUTE_KEYS)
    + ". Answer with JSON only."
)
ENHANCE_INSTRUCTION = (
    "Rewrite the request as one motion instruction for a talking avatar video of this person. Name the body part, "
    "the motion, its direction and its timing, and keep what the image shows."
)


def enhance_text(prompt: str, attributes: dict | None) -> str:
    """The instruction text `enhance` sends with the image; training data uses the same text. `attributes=None`
    (an enhancer with `use_attributes=False`) leaves the image alone to ground the request."""
    image = "" if attributes is None else f"\nImage: {json.dumps(attributes)}"
    return f"{ENHANCE_INSTRUCTION}{image}\nRequest: {prompt}"


def chat_messages(text: str) -> list[dict]:
    """One user turn with the image and `text`: the conversational prompt format of TRL and chat templates."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _as_value(value) -> str | list[str]:
    if isinstance(value, list):
        return [str(item) for item in value if item not in (None, "")]
    return "" if value is None else str(value)


def _close_json(text: str) -> str:
    """Closes the string, arrays and objects a truncated JSON answer left open."""
    closers, in_string, escaped = [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif in_string:
            escaped, in_string = char == "\\", char != '"'
        elif char == '"':
            in_string = True
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
        elif char in "}]" and closers:
            closers.pop()
    return text + '"' * in_string + "".join(reversed(closers))


def parse_attributes(text: str) -> dict:
    """The VLM's JSON answer as a dict with exactly `ATTRIBUTE_KEYS` (str or list of str values; "" when missing).

    Repairs what small VLMs get wrong (text or markdown fences around the object, single quotes, trailing commas,
    a truncated answer); when nothing parses, reads `key: value` pairs; never raises.
    """
    start = text.find("{")
    answer = text[start:].strip("` \n") if start >= 0 else ""
    candidates = [answer[: answer.rfind("}") + 1], answer, answer.replace("'", '"')]
    parsed = None
    for candidate in candidates:
        try:
            parsed = json.loads(re.sub(r",\s*([}\]])", r"\1", _close_json(candidate)))
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            break
    if not isinstance(parsed, dict):
        pairs = re.findall(r"[\"']?(\w+)[\"']?\s*:\s*[\"']?([^\"',}\n]*)", text)
        parsed = {key: value.strip() for key, value in pairs}
    return {key: _as_value(parsed.get(key)) for key in ATTRIBUTE_KEYS}


class SyncDreamerPromptEnhancer(ModelCardMixin, ModelMixin, ConfigMixin):
    """Qwen2-VL family model + processor (+ optional LoRA adapter) that writes motion instructions.

    Args:
        model: a Qwen2-VL / Qwen2.5-VL / Qwen3-VL `...ForConditionalGeneration`, or a `PeftModel` around one.
        processor: its processor (see `processing.load_processor`).
        image_size: reference images are resized to `image_size` x `image_size` before the VLM; one fixed size
            keeps the number of image tokens, and batched / vLLM generation, stable.
        max_new_tokens: default generation length of `enhance` and `extract_attributes`.
        use_attributes: whether `enhance` first extracts the image's attributes as JSON and sends them with the
            request (the two-step recipe of the paper); `False` sends the image and the request only, for small
            enhancers trained to read the image directly.
    """

    config_name = "enhancer_config.json"

    def __init__(self, model, processor, image_size: int = 448, max_new_tokens: int = 128, use_attributes: bool = True):
        super().__init__()
        # registered by hand: the decorator form misplaces positional arguments next to unregistered ones
        self.register_to_config(image_size=image_size, max_new_tokens=max_new_tokens, use_attributes=use_attributes)
        self.model = model
        self.processor = processor
        # decoder-only generation pads on the left; TRL's GRPO forward also assumes the processor does
        self.processor.tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, adapter_name_or_path=None, dtype=None, device_map=None, **kwargs
    ):
        """Loads the VLM through `AutoModelForImageTextToText`, its processor, and a LoRA adapter when
        `adapter_name_or_path` is given or the folder has an `adapter/` subfolder.

        `kwargs`: `image_size` / `max_new_tokens` / `use_attributes` override the saved settings; hub options (`cache_dir`, `revision`, `token`, `local_files_only`) go to every loader; model
        options (`max_memory`, `offload_folder`, `variant`, `use_safetensors`, `attn_implementation`) to the VLM.
        The diffusers-only options a pipeline passes to every component (`low_cpu_mem_usage`,
        `offload_state_dict`, `use_flashpack`, `disable_mmap`) do not apply to a transformers model and are dropped.
        """
        for diffusers_option in ("low_cpu_mem_usage", "offload_state_dict", "use_flashpack", "disable_mmap"):
            kwargs.pop(diffusers_option, None)
        path = pretrained_model_name_or_path
        hub_kwargs = {key: kwargs[key] for key in ("cache_dir", "revision", "token", "local_files_only") if key in kwargs}
        model_type = AutoConfig.from_pretrained(path, **hub_kwargs).model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{path!r} is a {model_type!r} model; the prompt enhancer needs a Qwen2-VL family model "
                f"({', '.join(SUPPORTED_MODEL_TYPES)}), e.g. 'Qwen/Qwen2-VL-2B-Instruct'."
            )
        try:
            config = cls.load_config(path, **hub_kwargs)
        except EnvironmentError:  # a plain VLM checkpoint: default settings
            config = {}
        settings = {key: kwargs.pop(key, config.get(key)) for key in ("image_size", "max_new_tokens", "use_attributes")}
        settings = {key: value for key, value in settings.items() if value is not None}

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, device_map=device_map, **kwargs)
        if adapter_name_or_path is None and os.path.isdir(os.path.join(path, ADAPTER_SUBFOLDER)):
            adapter_name_or_path = os.path.join(path, ADAPTER_SUBFOLDER)
        if adapter_name_or_path is not None:  # peft only for a LoRA adapter: a plain install loads a full model
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_name_or_path, **hub_kwargs)
        return cls(model.eval(), load_processor(path, **hub_kwargs), **settings)

    def save_pretrained(self, save_directory, safe_serialization=True, variant=None, max_shard_size="5GB", **kwargs):
        """Writes the VLM, its processor and `enhancer_config.json` into `save_directory`, and a LoRA adapter (if
        any) into `save_directory/adapter`. `merge_adapter()` first to save one merged model instead.
        `kwargs` (e.g. `push_to_hub`, `repo_id`) go to the VLM's `save_pretrained`."""
        os.makedirs(save_directory, exist_ok=True)
        self.save_config(save_directory)
        model, state_dict = self.model, None
        if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):  # a peft model (LoRA adapter)
            model.save_pretrained(os.path.join(save_directory, ADAPTER_SUBFOLDER), safe_serialization=safe_serialization)
            model = model.get_base_model()
            # LoRA layers wrap each target as `<name>.base_layer`; save the base weights under their original names
            state_dict = {
                key.replace(".base_layer", ""): value for key, value in model.state_dict().items() if "lora_" not in key
            }
        model.save_pretrained(
            save_directory,
            state_dict=state_dict,
            safe_serialization=safe_serialization,
            variant=variant,
            max_shard_size=max_shard_size,
            **kwargs,
        )
        self.processor.save_pretrained(save_directory)
        self.save_model_cards(save_directory)

    def model_card(self, repo_id: str = PLACEHOLDER_REPO_ID):
        """The enhancer's model card (`README.md`, written by `save_pretrained`)."""
        return render_component_card(
            self, "prompt_enhancer.md", repo_id, library_name="transformers",
            model_type=self.model.config.model_type, has_adapter=hasattr(self.model, "peft_config"),
        )

    def merge_adapter(self) -> "SyncDreamerPromptEnhancer":
        """Folds the LoRA adapter into the base weights (faster generation; `save_pretrained` then writes one
        model). A no-op without an adapter."""
        if hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _resize(self, image) -> PIL.Image.Image:
        size = self.config.image_size
        return load_image(image).resize((size, size), PIL.Image.BICUBIC)

    @torch.no_grad()
    def generate(self, images: list, texts: list[str], do_sample: bool = False, **generate_kwargs) -> list[str]:
        """One chat turn per (image, text) pair, batched; returns the decoded answers. Greedy unless `do_sample`."""
        chats = [self.processor.apply_chat_template(chat_messages(text), add_generation_prompt=True) for text in texts]
        images = [self._resize(image) for image in images]
        inputs = self.processor(text=chats, images=images, padding=True, return_tensors="pt").to(self.device)
        generate_kwargs.setdefault("max_new_tokens", self.config.max_new_tokens)
        output_ids = self.model.generate(**inputs, do_sample=do_sample, **generate_kwargs)
        answers = self.processor.batch_decode(output_ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [answer.strip() for answer in answers]

    @staticmethod
    def _as_batch(images, prompts=None) -> tuple[list, list | None, bool]:
        batched = isinstance(images, (list, tuple))
        images = list(images) if batched else [images]
        if prompts is not None:
            prompts = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
            if len(prompts) != len(images):
                raise ValueError(
                    f"got {len(images)} images and {len(prompts)} prompts; pass one reference image per prompt."
                )
        return images, prompts, batched

    def extract_attributes(self, image, **generate_kwargs) -> dict | list[dict]:
        """Clothing, background, objects, body pose and implicit actions seen in `image` (a PIL image, path or
        array; or a list of them -> a list of dicts). Malformed answers are repaired or fall back to ""."""
        images, _, batched = self._as_batch(image)
        answers = self.generate(images, [ATTRIBUTE_INSTRUCTION] * len(images), **generate_kwargs)
        attributes = [parse_attributes(answer) for answer in answers]
        return attributes if batched else attributes[0]

    def enhance(self, image, prompt, attributes=None, **generate_kwargs) -> str | list[str]:
        """The motion-aware instruction for `prompt` given the reference `image`.

        Takes one image and one prompt, or lists of both (then returns a list). `attributes` (a dict per image)
        skips the extraction step (an enhancer with `use_attributes=False` never extracts). Greedy, hence deterministic, unless `do_sample=True` is passed. An empty answer
        falls back to the user's prompt, so the video model always gets text.
        """
        images, prompts, batched = self._as_batch(image, prompt)
        if not self.config.use_attributes:
            attributes = [None] * len(images)
        elif attributes is None:
            attributes = self.extract_attributes(images, **generate_kwargs)
        elif isinstance(attributes, dict):
            attributes = [attributes]
        texts = [enhance_text(text, attrs) for text, attrs in zip(prompts, attributes, strict=True)]
        answers = self.generate(images, texts, **generate_kwargs)
        enhanced = [answer or text for answer, text in zip(answers, prompts)]
        return enhanced if batched else enhanced[0]
