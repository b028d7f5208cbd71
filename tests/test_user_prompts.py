"""User-style prompts of the synthetic world: valid meanings, grounded in the image, and a held-out split that no
training prompt contains."""

import re

import pytest

from syncdreamer_hf.data import synthetic as world
from syncdreamer_hf.data.user_prompts import (
    FRAGMENTS,
    OBJECT_FRAGMENTS,
    UserPrompt,
    all_user_prompts,
    target_prompt,
    user_prompts_for,
)
from syncdreamer_hf.evaluation.benchmark import make_benchmark_cases
from syncdreamer_hf.prompt_enhancer.world import world_row


@pytest.fixture(scope="module")
def prompts():
    return {split: all_user_prompts(split) for split in world.SPLITS}


def test_held_out_prompts_and_fragments_never_occur_in_training_prompts(prompts):
    train_texts = {prompt.text for prompt in prompts["train"]}
    heldout_texts = {prompt.text for prompt in prompts["heldout"]}
    assert train_texts and heldout_texts and not train_texts & heldout_texts
    heldout_fragments = [f for split_fragments in FRAGMENTS.values() for f in split_fragments["heldout"]]
    heldout_fragments += [
        f.replace("{object}", name) for f in OBJECT_FRAGMENTS["heldout"] for name in world.OBJECT_HANDS
    ]
    for fragment in heldout_fragments:
        pattern = re.compile(rf"\b{re.escape(fragment)}\b")
        assert not [text for text in train_texts if pattern.search(text)], fragment


def test_enhancer_training_rows_use_training_prompts_only(prompts):
    train_texts = {prompt.text for prompt in prompts["train"]}
    heldout_texts = {prompt.text for prompt in prompts["heldout"]}
    rows = [world_row(index, "train") for index in range(300)]
    assert all(row["prompt"] in train_texts and row["prompt"] not in heldout_texts for row in rows)
    assert all(row["identity"].split == "train" for row in rows)


def test_every_mapping_names_valid_instructions_and_objects(prompts):
    for prompt in prompts["train"] + prompts["heldout"]:
        assert set(prompt.instructions) <= set(world.INSTRUCTIONS), prompt
        assert set(prompt.objects) <= set(world.OBJECT_HANDS), prompt
        groups = [
            i for i, group in enumerate(world.INSTRUCTION_GROUPS) for name in prompt.instructions if name in group
        ]
        assert len(groups) == len(set(groups)), prompt  # at most one instruction per group, as the world draws
        for name in prompt.objects:  # "show them your pen" raises the hand that holds the pen
            assert prompt.instructions == (f"raise_{world.OBJECT_HANDS[name]}_hand",), prompt


def test_every_instruction_combination_has_held_out_prompts(prompts):
    meanings = {prompt.instructions for prompt in prompts["heldout"]}
    groups = world.INSTRUCTION_GROUPS
    pairs = {(a, b) for i, first in enumerate(groups) for second in groups[i + 1 :] for a in first for b in second}
    assert meanings == {()} | {(name,) for name in world.INSTRUCTIONS} | pairs


def test_object_prompts_are_grounded_in_the_image():
    show = "show everyone what you are holding"
    with_pen = [p for p in user_prompts_for(["raise_right_hand"], ["pen"]) if p.text == show]
    with_notebook = [p for p in user_prompts_for(["raise_left_hand"], ["notebook"]) if p.text == show]
    assert target_prompt(with_pen[0], ["pen"]) == "raise the right hand while holding a pen"
    assert target_prompt(with_notebook[0], ["notebook"]) == "raise the left hand while holding a notebook"
    # without a pen in the image "show them your pen" means nothing; with both objects "what you are holding" is
    # ambiguous: neither is offered
    assert all(p.objects != ("pen",) for p in user_prompts_for(["raise_right_hand"], []))
    assert show not in {p.text for p in user_prompts_for(["raise_right_hand"], ["pen", "notebook"])}
    say_hi = UserPrompt("say hi to everyone", ("wave_right_hand",))
    assert say_hi in user_prompts_for(["wave_right_hand"], [])
    assert target_prompt(say_hi, ["notebook"]) == "wave with the right hand while holding a notebook"


def test_benchmark_user_prompts_mean_each_clips_instructions(prompts):
    plain = make_benchmark_cases(n_clips=9, seconds=0.2)
    cases = make_benchmark_cases(n_clips=9, seconds=0.2, user_prompts=True)
    heldout = {(prompt.text, prompt.instructions) for prompt in prompts["heldout"]}
    for case, reference in zip(cases, plain):
        assert (case.instructions, case.objects, case.seed) == (
            reference.instructions,
            reference.objects,
            reference.seed,
        )
        assert reference.prompt == world.short_prompt(case.instructions, case.objects)
        order = [name for group in world.INSTRUCTION_GROUPS for name in group]
        assert (case.prompt, tuple(sorted(case.instructions, key=order.index))) in heldout
        assert case.prompt != reference.prompt
