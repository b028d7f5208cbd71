"""The prompt enhancer of the synthetic avatar world: its training data, a word-level tiny Qwen2-VL, and the reward
that GRPO maximises there.

The task: a reference image of the world (which may hold a pen or a notebook) and a user-style prompt
(`data.user_prompts`) -> the world's exact instruction phrase (`short_prompt(instructions, objects)`), the text
the video model was trained on. The image matters twice: the held objects must be named ("... while holding a
pen"), or the video model drops them, and "show everyone what you are holding" means the hand that holds it.

`WorldInstructionReward` scores a completion against the instructions and objects of its row: the asked motions
named, no motion that was not asked, the held objects named, and the exact phrase; times `gaming_penalty`
(repetition, runs of one word, length) and divided by 1 + the number of words that are not part of the world's
phrases (filler).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..data import synthetic as world
from ..data.user_prompts import all_user_prompts, sample_user_prompt, target_prompt
from .enhancer import ATTRIBUTE_INSTRUCTION, ENHANCE_INSTRUCTION
from .rewards import _text, gaming_penalty
from .tiny import SPECIAL_TOKENS, build_tiny_qwen2_vl

IMAGE_SIZE = 64  # the world's reference images, 64x64: 16 image tokens (8x8 patches merged 2x2)
MAX_NEW_TOKENS = 20  # the longest world phrase has 17 words
OBJECT_PROBABILITY = 0.35  # each object, in the enhancer's training images (the world draws 0.2)
OBJECT_PROMPT_PROBABILITY = 0.3  # rows whose prompt is about the held object, where one is held
# Training prompts get noise words (each row with probability `noise`): fillers a person adds, and made-up words
# that the tokenizer reads as [UNK], as it reads every word it never saw; so the enhancer learns to ignore them.
FILLER_WORDS = ("okay", "now", "so", "um", "for me", "a little", "while you speak", "as you go", "when you can", "hey")
NOISE_WORDS = 2  # at most, per noisy prompt
UNKNOWN_TOKEN = "[UNK]"
# Word dropout (`unknown` > 0): each other word of a training prompt becomes a made-up word ([UNK]) with probability
# `unknown`, as the words only held-out phrasings use do; the side and direction words and the objects' names stay,
# since they alone decide between instructions ("say hi with your left hand").
KEPT_WORDS = frozenset({"left", "right", "up", "down", "upwards", "downwards", *world.OBJECT_HANDS})
# word sequences of the world's phrases: instruction name (or "" for "talk to the camera") -> words
INSTRUCTION_WORDS = {name: tuple(imperative.split()) for name, (imperative, _) in world.INSTRUCTIONS.items()}
INSTRUCTION_WORDS[""] = tuple(world.short_prompt([]).split())
CONNECTOR_WORDS = {("and",), ("while", "holding")}
OBJECT_WORDS = {name: ("a", name) for name in world.OBJECT_HANDS}


def made_up_word(rng: np.random.Generator) -> str:
    """Seven random letters: a word the world's tokenizer reads as [UNK]."""
    return "".join(chr(ord("a") + letter) for letter in rng.integers(26, size=7))


def add_noise_words(text: str, rng: np.random.Generator) -> str:
    """`text` with 1 to `NOISE_WORDS` fillers or made-up words inserted at random places."""
    words = text.split()
    for _ in range(rng.integers(1, NOISE_WORDS + 1)):
        noise = FILLER_WORDS[rng.integers(len(FILLER_WORDS))] if rng.random() < 0.5 else made_up_word(rng)
        words.insert(rng.integers(len(words) + 1), noise)
    return " ".join(words)


def drop_words(text: str, share: float, rng: np.random.Generator) -> str:
    """`text` with each word not in `KEPT_WORDS` replaced by a made-up word ([UNK]) with probability `share`."""
    return " ".join(
        made_up_word(rng) if word not in KEPT_WORDS and rng.random() < share else word for word in text.split()
    )


def world_row(index: int, split: str = "train", seed: int = 0, noise: float = 0.0, unknown: float = 0.0) -> dict:
    """Row `index` of the enhancer data of `split`: identity, held objects, a user prompt (with noise words with
    probability `noise`, and each word but `KEPT_WORDS` made [UNK] with probability `unknown`) and its target phrase.

    Returns {"identity", "objects", "prompt", "instructions", "target"}; deterministic in (index, split, seed).
    """
    clip_seed = world.clip_seed(seed, split, index)
    rng = np.random.default_rng(clip_seed)
    identity = world.sample_identity(clip_seed, split)
    objects = [name for name in world.OBJECT_HANDS if rng.random() < OBJECT_PROBABILITY]
    instructions, _ = world.sample_instructions(rng)
    if objects and rng.random() < OBJECT_PROMPT_PROBABILITY:
        instructions = [f"raise_{world.OBJECT_HANDS[objects[rng.integers(len(objects))]]}_hand"]
    prompt = sample_user_prompt(instructions, objects, split, rng)
    text = add_noise_words(prompt.text, rng) if rng.random() < noise else prompt.text
    return {
        "identity": identity,
        "objects": objects,
        "prompt": drop_words(text, unknown, rng) if unknown else text,
        "instructions": list(prompt.instructions),
        "target": target_prompt(prompt, objects),
    }


def write_world_dataset(out_dir, num_rows: int, split: str = "train", seed: int = 0, noise: float = 0.0,
                        unknown: float = 0.0) -> str:
    """Writes `num_rows` rows (`world_row`) (64x64 reference PNGs + `metadata.jsonl` in the layout of
    `train_prompt_enhancer.py`, with the `instructions` and `objects` columns the reward reads). Returns the folder."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metadata.jsonl"), "w", encoding="utf-8") as metadata:
        for index in range(num_rows):
            row = world_row(index, split, seed, noise, unknown)
            file_name = f"{index:05d}.png"
            world.render_reference_image(row["identity"], row["objects"], IMAGE_SIZE, IMAGE_SIZE).save(
                os.path.join(out_dir, file_name)
            )
            record = {"file_name": file_name, "prompt": row["prompt"], "target": row["target"],
                      "attributes": world.clip_attributes(row["identity"], row["objects"]),
                      "instructions": row["instructions"], "objects": row["objects"]}  # fmt: skip
            metadata.write(json.dumps(record) + "\n")
    return str(out_dir)


def build_world_tokenizer():
    """A word-level tokenizer over the training split's words, the world's phrases and the enhancer's instruction
    (lower-cased; punctuation is split off). Words only the held-out prompts use map to `[UNK]`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .tiny import CHAT_TEMPLATE

    texts = [prompt.text for prompt in all_user_prompts("train")] + [ENHANCE_INSTRUCTION, ATTRIBUTE_INSTRUCTION]
    texts += [" ".join(words) for words in INSTRUCTION_WORDS.values()] + ["while holding a pen and a notebook"]
    texts += ["user assistant system Request: Image:", *FILLER_WORDS]
    words = sorted({word for text in texts for word, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text.lower())})
    vocabulary = {token: i for i, token in enumerate(SPECIAL_TOKENS + [UNKNOWN_TOKEN] + words)}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token=UNKNOWN_TOKEN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=UNKNOWN_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )  # fmt: skip


def build_world_vlm(save_directory, hidden_size: int = 64, seed: int = 0) -> str:
    """A random tiny Qwen2-VL with the world's word-level tokenizer, 64x64 images and `use_attributes=False` (the
    image alone grounds the request), saved as an enhancer folder; returns the path."""
    return build_tiny_qwen2_vl(
        save_directory,
        hidden_size=hidden_size,
        image_size=IMAGE_SIZE,
        seed=seed,
        tokenizer=build_world_tokenizer(),
        max_new_tokens=MAX_NEW_TOKENS,
        use_attributes=False,
    )


def parse_world_phrase(text: str) -> tuple[list[str], list[str], int]:
    """(instructions, objects, other words) that `text` names with the world's phrases, read left to right
    (longest phrase first); "" stands for "talk to the camera"."""
    words = text.lower().split()
    phrases = [(words_, "instruction", name) for name, words_ in INSTRUCTION_WORDS.items()]
    phrases += [(words_, "object", name) for name, words_ in OBJECT_WORDS.items()]
    phrases += [(words_, "connector", None) for words_ in CONNECTOR_WORDS]
    phrases.sort(key=lambda phrase: -len(phrase[0]))
    instructions, objects, other, i = [], [], 0, 0
    while i < len(words):
        match = next((p for p in phrases if tuple(words[i : i + len(p[0])]) == p[0]), None)
        if match is None:
            other, i = other + 1, i + 1
            continue
        if match[1] == "instruction":
            instructions.append(match[2])
        elif match[1] == "object":
            objects.append(match[2])
        i += len(match[0])
    return instructions, objects, other


class WorldInstructionReward:
    """Reward of a completion for the synthetic world, in [0, 1]; reads the `instructions` and `objects` columns.

    0.5 x motion score (recall of the asked instructions / (1 + unasked motions + repeated instructions))
    + 0.3 x objects (1 when exactly the image's objects are named once) + 0.2 x exact world phrase; times
    `gaming_penalty(text, max_words)` and / (1 + words outside the world's phrases). `penalties=False` keeps only
    recall x object recall: the naive keyword reward, kept to measure what the penalties prevent.
    """

    def __init__(self, max_words: int = MAX_NEW_TOKENS, penalties: bool = True):
        self.max_words = max_words
        self.penalties = penalties

    def score(self, text: str, instructions, objects) -> float:
        named, held, other = parse_world_phrase(text)
        asked = set(instructions) or {""}
        recall = len(asked & set(named)) / len(asked)
        object_recall = len(set(objects) & set(held)) / len(objects) if objects else 1.0
        if not self.penalties:
            return recall * object_recall
        unasked = set(named) - world.expected_motions(instructions) - {""}  # talking is no motion
        repeated = len(named) - len(set(named)) + len(held) - len(set(held))
        motion = recall / (1 + len(unasked) + repeated)
        exact_objects = float(sorted(set(held)) == sorted(objects) and len(held) == len(set(held)))
        exact = float(" ".join(text.split()) == world.short_prompt(instructions, objects))
        return (0.5 * motion + 0.3 * exact_objects + 0.2 * exact) * gaming_penalty(text, self.max_words) / (1 + other)

    def __call__(self, prompts, completions, instructions, objects, **kwargs) -> list[float]:
        return [self.score(_text(c), i, o) for c, i, o in zip(completions, instructions, objects)]


def score_enhancer(enhancer, rows: list[dict], batch_size: int = 32) -> dict:
    """Greedy enhancements of `rows` (from `world_row`) scored against their targets.

    Returns {"exact": share of exact world phrases, "instructions": share naming exactly the asked instructions,
    "unasked": share naming a motion that was not asked, "objects": share naming exactly the held objects,
    "reward": mean `WorldInstructionReward`, "completions": [str]}.
    """
    images = [world.render_reference_image(row["identity"], row["objects"], IMAGE_SIZE, IMAGE_SIZE) for row in rows]
    completions = []
    for start in range(0, len(rows), batch_size):
        batch = slice(start, start + batch_size)
        completions += enhancer.enhance(images[batch], [row["prompt"] for row in rows[batch]])
    reward, exact, followed, unasked, objects = WorldInstructionReward(), [], [], [], []
    for row, completion in zip(rows, completions):
        named, held, _ = parse_world_phrase(completion)
        named = set(named) - {""}
        exact.append(completion == row["target"])
        followed.append(named == set(row["instructions"]))
        unasked.append(bool(named - world.expected_motions(row["instructions"])))
        objects.append(sorted(held) == sorted(row["objects"]))
    return {"exact": float(np.mean(exact)), "instructions": float(np.mean(followed)),
            "unasked": float(np.mean(unasked)), "objects": float(np.mean(objects)),
            "reward": float(np.mean([reward.score(c, r["instructions"], r["objects"])
                                     for c, r in zip(completions, rows)])),
            "completions": completions}  # fmt: skip
