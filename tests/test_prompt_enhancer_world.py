"""The prompt enhancer of the synthetic world: its reward resists gaming, its word-level tokenizer writes the world's
phrases back exactly, `evaluate synthetic --user-prompts --enhance-prompt` scores enhanced user prompts, and the
trained enhancer shipped with SyncDreamer-Tiny turns held-out user prompts into the world's instructions."""

import json
from pathlib import Path

import pytest

from syncdreamer_hf.cli import main
from syncdreamer_hf.data import synthetic as world
from syncdreamer_hf.data.user_prompts import all_user_prompts
from syncdreamer_hf.evaluation.benchmark import make_benchmark_cases
from syncdreamer_hf.prompt_enhancer import SyncDreamerPromptEnhancer
from syncdreamer_hf.prompt_enhancer.enhancer import ENHANCE_INSTRUCTION
from syncdreamer_hf.prompt_enhancer.world import (
    KEPT_WORDS,
    UNKNOWN_TOKEN,
    WorldInstructionReward,
    build_world_tokenizer,
    build_world_vlm,
    parse_world_phrase,
    world_row,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PIPELINE = REPO / "pipelines" / "syncdreamer-tiny"
ASK = {"instructions": ["wave_right_hand"], "objects": ["pen"]}


def test_world_reward_is_one_only_for_the_exact_phrase():
    reward = WorldInstructionReward()
    assert reward.score("wave with the right hand while holding a pen", **ASK) == 1.0
    assert reward.score("talk to the camera", [], []) == 1.0
    assert reward.score("", **ASK) == 0.0
    # the held object dropped, or the motion missing: partial credit only
    assert reward.score("wave with the right hand", **ASK) == pytest.approx(0.5)
    assert reward.score("talk to the camera while holding a pen", **ASK) == pytest.approx(0.3)


@pytest.mark.parametrize("gamed", [
    " and ".join(imperative for imperative, _ in world.INSTRUCTIONS.values()) + " while holding a pen",
    "wave with the right hand and wave with the right hand while holding a pen and a pen",
    "wave wave wave hand hand pen",
    "please now wave with the right hand nicely and happily while holding a pen yes",
])  # fmt: skip
def test_world_reward_penalises_what_the_naive_reward_pays_for(gamed):
    naive, penalised = WorldInstructionReward(penalties=False), WorldInstructionReward()
    exact = "wave with the right hand while holding a pen"
    if "wave wave" not in gamed:  # a keyword count alone pays these in full
        assert naive.score(gamed, **ASK) == naive.score(exact, **ASK) == 1.0
    assert penalised.score(gamed, **ASK) < 0.25


def test_parse_world_phrase_reads_instructions_and_objects():
    assert parse_world_phrase("turn the head to the left and look up while holding a pen and a notebook") == (
        ["turn_head_left", "look_up"],
        ["pen", "notebook"],
        0,
    )
    assert parse_world_phrase("please look up now") == (["look_up"], [], 2)


def test_world_tokenizer_writes_every_world_phrase_back_and_does_not_know_held_out_only_words():
    tokenizer = build_world_tokenizer()
    for instructions in [[], *([name] for name in world.INSTRUCTIONS), ["nod", "wave_left_hand", "look_down"]]:
        phrase = world.short_prompt(instructions, list(world.OBJECT_HANDS))
        ids = tokenizer(phrase)["input_ids"]
        assert len(ids) == len(phrase.split()) and tokenizer.decode(ids) == phrase
    train_words = {word for prompt in all_user_prompts("train") for word in prompt.text.split()}
    train_words |= set(ENHANCE_INSTRUCTION.lower().replace(",", " ").replace(".", " ").split())
    heldout_only = {word for p in all_user_prompts("heldout") for word in p.text.split()} - train_words
    assert heldout_only  # e.g. "everyone": the held-out prompts are new phrasings
    assert all(
        tokenizer.convert_ids_to_tokens(tokenizer(word)["input_ids"]) == [UNKNOWN_TOKEN] for word in heldout_only
    )


def test_word_dropout_makes_other_words_unknown_and_keeps_sides_objects_and_targets():
    tokenizer = build_world_tokenizer()
    for index in range(50):
        clean, dropped = world_row(index, "train"), world_row(index, "train", unknown=0.5)
        assert (dropped["target"], dropped["objects"]) == (clean["target"], clean["objects"])
        words, dropped_words = clean["prompt"].split(), dropped["prompt"].split()
        assert len(words) == len(dropped_words)
        for word, new in zip(words, dropped_words):
            if word in KEPT_WORDS or new == word:
                assert new == word
            else:  # a made-up word, read as [UNK]
                assert tokenizer.convert_ids_to_tokens(tokenizer(new)["input_ids"]) == [UNKNOWN_TOKEN]
    assert world_row(3, "train", unknown=0.0) == world_row(3, "train")  # off by default: the rows are unchanged


def test_evaluate_synthetic_with_user_prompts_and_an_enhancer(tmp_path):
    enhancer_dir = build_world_vlm(tmp_path / "enhancer", hidden_size=32)  # random: any text it writes will do
    enhancer = SyncDreamerPromptEnhancer.from_pretrained(enhancer_dir, max_new_tokens=6)
    enhancer.save_pretrained(enhancer_dir)
    output = tmp_path / "results.json"
    code = main(["evaluate", "synthetic", "--model", str(REPO / "pipelines" / "syncdreamer-tiny-random"),
                 "--clips", "2", "--seconds", "0.2", "--size", "32", "--num-inference-steps", "1",
                 "--no-swapped-audio", "--user-prompts", "--enhance-prompt", "--prompt-enhancer", enhancer_dir,
                 "--output", str(output)])  # fmt: skip
    assert code == 0
    results = json.loads(output.read_text())
    cases = make_benchmark_cases(n_clips=2, seconds=0.2, height=32, width=32, user_prompts=True)
    assert results["settings"]["user_prompts"] is True
    for clip, case in zip(results["clips"], cases):
        assert clip["prompt"] == case.prompt != clip["instruction_prompt"]
        assert clip["instruction_prompt"] == world.short_prompt(case.instructions, case.objects)
        assert clip["enhanced_prompt"] == enhancer.enhance(case.image, case.prompt)


def test_evaluate_enhance_prompt_without_an_enhancer_is_one_line(capsys):
    code = main(
        [
            "evaluate",
            "synthetic",
            "--model",
            str(REPO / "pipelines" / "syncdreamer-tiny-random"),
            "--clips",
            "2",
            "--enhance-prompt",
        ]
    )
    assert code == 2 and "--prompt-enhancer" in capsys.readouterr().err


SHIPPED_EXAMPLES = [  # (held-out identity seed, objects in the image, held-out user prompt, the world's phrase)
    (3, ["pen"], "say hi to everyone", "wave with the right hand while holding a pen"),
    (4, ["notebook"], "look at the ceiling while you explain", "look up while holding a notebook"),
    (9, [], "agree with a nod", "nod"),
]


def test_shipped_enhancer_loads_from_the_pipeline_folder_and_enhances_held_out_prompts_greedily():
    """The trained enhancer in SyncDreamer-Tiny's `prompt_enhancer/` (built by build_prompt_enhancer_tiny.py)."""
    from syncdreamer_hf import SyncDreamerPipeline

    pipe = SyncDreamerPipeline.from_pretrained(SHIPPED_PIPELINE)
    assert isinstance(pipe.prompt_enhancer, SyncDreamerPromptEnhancer)
    assert (SHIPPED_PIPELINE / "prompt_enhancer" / "model.safetensors").is_file()
    images = [world.render_reference_image(world.sample_identity(seed, "heldout"), objects)
              for seed, objects, _, _ in SHIPPED_EXAMPLES]  # fmt: skip
    prompts = [prompt for _, _, prompt, _ in SHIPPED_EXAMPLES]
    expected = [phrase for _, _, _, phrase in SHIPPED_EXAMPLES]
    assert pipe.prompt_enhancer.enhance(images, prompts) == expected
    folder = SyncDreamerPromptEnhancer.from_pretrained(SHIPPED_PIPELINE / "prompt_enhancer")
    assert [folder.enhance(image, prompt) for image, prompt in zip(images, prompts)] == expected  # one at a time too
