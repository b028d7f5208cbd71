"""User-style prompts for the synthetic avatar world: what a person would type instead of the world's exact
instruction phrases ("say hi to everyone" instead of "wave with the right hand").

Each prompt means a set of the world's instructions (names from `synthetic.INSTRUCTIONS`) and may refer to
objects the reference image must hold ("show them your pen" only makes sense when the avatar holds a pen, and then
means "raise the right hand", the pen's hand). The world's exact phrase for a prompt on an image is
`target_prompt(prompt, objects_in_image)`: `short_prompt(instructions, objects)`, the text the video model was
trained on; the prompt enhancer learns to write it.

Two disjoint splits, built from phrase fragments and templates:

- "train": paraphrases for the enhancer's SFT and GRPO data;
- "heldout": other fragments and mostly other templates, for evaluation only. No held-out fragment or prompt
  occurs in any training prompt (tested); the words are shared (a word-level model cannot read a word it never
  saw), the phrasings are new.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .synthetic import INSTRUCTION_GROUPS, INSTRUCTIONS, OBJECT_HANDS, SPLITS, short_prompt

# instruction name -> {split: fragments}; "" is "no instruction" (just talking)
FRAGMENTS = {
    "turn_head_left": {
        "train": ("turn your head left", "face your left", "head to your left", "turn left"),
        "heldout": ("turn your face to the left", "look over your left shoulder"),
    },
    "turn_head_right": {
        "train": ("turn your head right", "face your right", "head to your right", "turn right"),
        "heldout": ("turn your face to the right", "look over your right shoulder"),
    },
    "nod": {
        "train": ("nod your head", "keep nodding", "nod yes", "nod along"),
        "heldout": ("nod a few times", "agree with a nod"),
    },
    "raise_right_hand": {
        "train": ("put your right hand up", "right hand up", "lift your right arm", "raise your right arm"),
        "heldout": ("hold your right hand up high", "lift the right hand"),
    },
    "raise_left_hand": {
        "train": ("put your left hand up", "left hand up", "lift your left arm", "raise your left arm"),
        "heldout": ("hold your left hand up high", "lift the left hand"),
    },
    "wave_right_hand": {
        "train": ("wave hello", "wave your right hand", "say hello", "give a wave", "say hi to the camera"),
        "heldout": ("say hi to everyone", "greet everyone with a wave"),
    },
    "wave_left_hand": {
        "train": ("wave your left hand", "wave hello with the left hand", "give a wave with your left"),
        "heldout": ("say hi with your left hand", "greet everyone with the left hand"),
    },
    "look_up": {
        "train": ("look at the sky", "eyes up", "gaze upwards", "stare at the ceiling"),
        "heldout": ("look at the ceiling", "glance upwards"),
    },
    "look_down": {
        "train": ("look at the floor", "eyes down", "gaze downwards", "look at your feet"),
        "heldout": ("look down at the floor", "glance downwards"),
    },
    "look_left": {
        "train": ("look to your left", "eyes to the left", "glance left", "gaze to your left"),
        "heldout": ("glance to the left", "look left with your eyes"),
    },
    "look_right": {
        "train": ("look to your right", "eyes to the right", "glance right", "gaze to your right"),
        "heldout": ("glance to the right", "look right with your eyes"),
    },
    "": {
        "train": ("just talk", "keep still", "no movement please", "just speak normally", "stay still and talk"),
        "heldout": ("calm no gestures", "just explain it calmly"),
    },
}
# Prompts about a held object: {split: (fragment, object)}; "{object}" prompts name it, the others do not, and mean
# "raise the hand that holds it" either way (see `OBJECT_HANDS`).
OBJECT_FRAGMENTS = {
    "train": ("hold up your {object}", "lift up what you are holding", "show the {object}"),
    "heldout": ("show them your {object}", "show everyone what you are holding"),
}
# {split: templates}: one fragment "{a}", or two "{a}" and "{b}"
TEMPLATES = {
    "train": {
        1: ("{a}", "{a} please", "{a} while talking", "please {a}"),
        2: ("{a} and {b}", "{a} then {b}", "{a} and also {b}", "{b} and {a}"),
    },
    "heldout": {
        1: ("{a}", "{a} while you explain", "{a} as you talk"),
        2: ("{a} while you {b}", "{b} and at the same time {a}"),
    },
}


@dataclass(frozen=True)
class UserPrompt:
    """A user-style prompt, the world instructions it means, and the objects it needs in the image."""

    text: str
    instructions: tuple[str, ...]
    objects: tuple[str, ...] = ()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")


def _canonical(instructions) -> tuple[str, ...]:
    """Instructions in the world's order (head, hand, gaze group), as `short_prompt` writes them."""
    order = [name for group in INSTRUCTION_GROUPS for name in group]
    return tuple(sorted(instructions, key=order.index))


def object_prompts(objects, split: str) -> list[UserPrompt]:
    """The object prompts that make sense for an image holding `objects` (a prompt that names no object needs
    exactly one held object: otherwise it is ambiguous)."""
    prompts = []
    for template in OBJECT_FRAGMENTS[split]:
        named = "{object}" in template
        for name in objects if named or len(objects) == 1 else ():
            prompts.append(UserPrompt(template.format(object=name), (f"raise_{OBJECT_HANDS[name]}_hand",), (name,)))
    return prompts


def user_prompts_for(instructions, objects=(), split: str = "heldout") -> list[UserPrompt]:
    """Every prompt of `split` that means exactly `instructions` on an image holding `objects`."""
    _check_split(split)
    instructions = _canonical(instructions)
    pieces = [FRAGMENTS[name][split] for name in instructions] or [FRAGMENTS[""][split]]
    prompts = []
    for fragments in itertools.product(*pieces):
        for order in itertools.permutations(fragments):
            for template in TEMPLATES[split][len(order)]:
                prompts.append(UserPrompt(template.format(a=order[0], b=order[-1]), instructions))
    if len(instructions) == 1:
        prompts += [p for p in object_prompts(objects, split) if p.instructions == instructions]
    return sorted(set(prompts), key=lambda prompt: prompt.text)


def all_user_prompts(split: str) -> list[UserPrompt]:
    """Every prompt of `split` for every instruction combination the world draws, on every object set."""
    combinations = [()] + [(name,) for name in INSTRUCTIONS]
    combinations += [(a, b) for g, h in itertools.combinations(INSTRUCTION_GROUPS, 2) for a in g for b in h]
    object_sets = [()] + [(name,) for name in OBJECT_HANDS] + [tuple(OBJECT_HANDS)]
    prompts = {p for c in combinations for objects in object_sets for p in user_prompts_for(c, objects, split)}
    return sorted(prompts, key=lambda prompt: (prompt.text, prompt.objects))


def sample_user_prompt(instructions, objects, split: str, rng: np.random.Generator) -> UserPrompt:
    """One prompt of `split` meaning `instructions` on an image holding `objects`, drawn with `rng`."""
    prompts = user_prompts_for(instructions, objects, split)
    return prompts[rng.integers(len(prompts))]


def target_prompt(prompt: UserPrompt, objects) -> str:
    """The world's exact instruction phrase for `prompt` on an image holding `objects`."""
    return short_prompt(prompt.instructions, objects)
