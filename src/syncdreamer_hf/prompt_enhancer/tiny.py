"""A tiny random-weight Qwen2-VL and a toy dataset, built offline, for tests and CPU dry runs of the enhancer
training script.

The tokenizer is a byte-level BPE trained with the `tokenizers` library on the enhancer's own vocabulary (body
parts, motion verbs, visual words, the instruction templates), so whole words are single tokens and a few GRPO
steps can move a random policy towards them. It is saved with `save_pretrained` and meant to be loaded back through
`SyncDreamerPromptEnhancer.from_pretrained`, the path a user takes.
"""

import itertools
import json
import os
import random
import string

import PIL.Image

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .enhancer import ATTRIBUTE_INSTRUCTION, ENHANCE_INSTRUCTION, SyncDreamerPromptEnhancer
from .processing import image_only_processor_class
from .rewards import ATTRIBUTE_KEYS, BODY_PARTS, MODIFIERS, MOTION_VERBS, STOPWORDS, VISUAL_WORDS

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
]  # fmt: skip
# Qwen2-VL's chat template, reduced to what the enhancer sends: text and image content parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    vocabulary = sorted(BODY_PARTS | MOTION_VERBS | MODIFIERS | VISUAL_WORDS | STOPWORDS) + list(ATTRIBUTE_KEYS)
    lines = [" ".join(vocabulary)] * 20 + [string.printable, "user assistant system"]
    lines += [ATTRIBUTE_INSTRUCTION, ENHANCE_INSTRUCTION] * 5
    triples = zip(sorted(MOTION_VERBS) * 8, itertools.cycle(sorted(BODY_PARTS)), itertools.cycle(sorted(MODIFIERS)))
    lines += [f"{verb}s the {part} {modifier}" for verb, part, modifier in triples]
    return lines


def build_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )


def build_tiny_qwen2_vl(save_directory, hidden_size: int = 32, image_size: int = 32, seed: int = 0, tokenizer=None,
                        max_new_tokens: int = 24, use_attributes: bool = True) -> str:
    """Saves a random ~70k-parameter Qwen2-VL with its tokenizer (default: `build_tiny_tokenizer()`) and
    (torchvision-free) processor as an enhancer folder; returns the path.

    Images are resized to `image_size`^2 pixels and cut into 8x8 patches merged 2x2: (image_size / 16)^2 tokens.
    """
    import torch

    tokenizer = tokenizer or build_tiny_tokenizer()
    head_dim = hidden_size // 2
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 1024,
            # mrope sections (temporal, height, width) must sum to head_dim / 2
            "rope_parameters": {"rope_type": "mrope", "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]},
            "bos_token_id": None,
            # wide enough embeddings (tied to the frozen lm_head) that LoRA can make the output distribution peaked
            "initializer_range": 0.2,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        # the vision tower's output width (`hidden_size`) must equal the language model's width
        vision_config={"depth": 1, "embed_dim": hidden_size, "hidden_size": hidden_size, "num_heads": 2, "patch_size": 8},
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=image_size**2, max_pixels=image_size**2, patch_size=8, merge_size=2, temporal_patch_size=2
    )
    processor = image_only_processor_class(Qwen2VLProcessor)(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
    enhancer = SyncDreamerPromptEnhancer(
        model, processor, image_size=image_size, max_new_tokens=max_new_tokens, use_attributes=use_attributes
    )
    enhancer.save_pretrained(save_directory)
    return str(save_directory)


TOY_COLORS = {"red": (200, 30, 30), "blue": (30, 60, 200), "green": (30, 160, 60), "yellow": (220, 200, 40)}
TOY_PROMPTS = ["wave hello", "say hi", "nod", "look around", "greet the viewer", "point at something"]


def build_toy_dataset(save_directory, num_rows: int = 24, seed: int = 0) -> str:
    """Writes `num_rows` (image, prompt, attributes, target) rows: a coloured shirt on a grey or white background,
    in the `metadata.jsonl` layout `train_prompt_enhancer.py` reads. Returns the folder."""
    rng = random.Random(seed)
    os.makedirs(save_directory, exist_ok=True)
    with open(os.path.join(save_directory, "metadata.jsonl"), "w", encoding="utf-8") as metadata:
        for index in range(num_rows):
            color, background = rng.choice(sorted(TOY_COLORS)), rng.choice(["office", "studio"])
            image = PIL.Image.new("RGB", (48, 48), (235, 235, 235) if background == "studio" else (120, 110, 100))
            image.paste(TOY_COLORS[color], (12, 20, 36, 48))  # the shirt
            file_name = f"{index:04d}.png"
            image.save(os.path.join(save_directory, file_name))
            attributes = {"clothing": f"{color} shirt", "background": background, "objects": [],
                          "body_pose": "standing", "implicit_actions": ""}  # fmt: skip
            target = f"the person in the {color} shirt raises the right hand and waves slowly"
            row = {"file_name": file_name, "prompt": rng.choice(TOY_PROMPTS), "attributes": attributes, "target": target}
            metadata.write(json.dumps(row) + "\n")
    return str(save_directory)
