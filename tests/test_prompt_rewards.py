"""Each prompt-enhancer reward ranks hand-written instructions: grounded, specific and fluent beats vague,
hallucinated and reward-gaming text."""

import json
import random

import PIL.Image
import pytest
import torch
from transformers import CLIPConfig, CLIPModel, Qwen2Config, Qwen2ForCausalLM

from syncdreamer_hf.prompt_enhancer import (
    ActionSpecificityReward,
    FluencyReward,
    VisualRelevanceReward,
    gaming_penalty,
)
from syncdreamer_hf.prompt_enhancer.tiny import build_tiny_tokenizer

ATTRIBUTES = {
    "clothing": "red jacket",
    "background": "office",
    "objects": ["coffee mug"],
    "body_pose": "sitting at a desk",
    "implicit_actions": "",
}
PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Request: say hello"}]}]
GOOD = "The woman in the red jacket sits at her office desk, raises her right hand slowly and waves, then nods once."
VAGUE = "The person says hello in a nice way."
HALLUCINATED = "The woman in the blue dress sits on the beach with a guitar, raises her right hand slowly and waves."
WORD_SALAD = " ".join(random.Random(0).sample(GOOD.split(), len(GOOD.split())))
_ramble_words = GOOD.replace(",", "").replace(".", "").split()
GAMING = {
    "repeated_word": "step " * 40,
    "run_of_one_word": "raise raise raise the right hand slowly in the red jacket at the office",
    "repeated_sentence": GOOD + " " + GOOD + " " + GOOD,
    "500_word_ramble": " ".join(random.Random(1).choice(_ramble_words) for _ in range(500)),
    "empty": "",
}
FLUENT_CORPUS = [
    f"The {who} in the {color} {cloth} {verb} {whose} {side} {part} {manner}, then {verb2} once."
    for who, whose in [("woman", "her"), ("man", "his")]
    for color, cloth in [("red", "jacket"), ("blue", "shirt"), ("green", "sweater")]
    for verb, verb2 in [("raises", "nods"), ("lifts", "smiles"), ("lowers", "waves")]
    for side, part in [("right", "hand"), ("left", "arm")]
    for manner in ["slowly", "gently"]
]


def ranks_good_first(reward, negatives: dict, **kwargs) -> dict:
    """{name: (good score, negative score)} for every negative the reward does not rank below GOOD."""
    texts = [GOOD, *negatives.values()]
    attributes = [json.dumps(ATTRIBUTES)] * len(texts)
    scores = reward([PROMPT] * len(texts), texts, attributes=attributes, **kwargs)
    return {name: (scores[0], score) for name, score in zip(negatives, scores[1:]) if score >= scores[0]}


@pytest.fixture(scope="module")
def fluent_lm():
    """A tiny causal LM fitted to fluent motion instructions (a stand-in for the frozen base model)."""
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    batch = tokenizer([tokenizer.eos_token + text for text in FLUENT_CORPUS], return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, tokenizer


def test_gaming_penalty_values():
    assert gaming_penalty(GOOD) == 1.0
    assert gaming_penalty("step step step") == gaming_penalty("") == 0.0
    assert gaming_penalty("raise the hand, raise the hand") == pytest.approx(3 / 5)  # 5 bigrams, 3 distinct
    distinct_words = " ".join(f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(160))
    assert gaming_penalty(distinct_words.replace("w", "x"), max_words=80) == pytest.approx(0.5)


def test_visual_relevance_ranks_grounded_above_vague_hallucinated_and_gaming():
    reward = VisualRelevanceReward()
    assert ranks_good_first(reward, {"vague": VAGUE, "hallucinated": HALLUCINATED, **GAMING}) == {}
    # the hallucination penalty alone: the same sentence with one unseen object scores half
    grounded = "The woman in the red jacket raises her right hand at the office desk."
    assert reward.score(grounded.replace("desk", "desk and guitar"), ATTRIBUTES) == pytest.approx(
        reward.score(grounded, ATTRIBUTES) / 2
    )
    # words of the user's prompt are not hallucinations
    assert reward.score("She holds a guitar", ATTRIBUTES, prompt="play the guitar") == reward.score("She holds", ATTRIBUTES)


def test_visual_relevance_needs_attributes_or_clip():
    with pytest.raises(ValueError, match="attributes"):
        VisualRelevanceReward()([PROMPT], [GOOD])


def test_clip_relevance_scores_in_unit_range_with_penalties():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 64},
        vision_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip

    def clip_processor(text, images, **kwargs):  # stands in for CLIPProcessor (which needs torchvision here)
        ids = [[sum(map(ord, word)) % 99 for word in t.split()][:60] or [0] for t in text]
        width = max(map(len, ids))
        return {
            "input_ids": torch.tensor([row + [0] * (width - len(row)) for row in ids]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids]),
            "pixel_values": torch.rand(len(images), 3, 16, 16),
        }

    reward = VisualRelevanceReward(clip_model=CLIPModel(config), clip_processor=clip_processor)
    image = PIL.Image.new("RGB", (16, 16))
    texts = [GOOD, GAMING["repeated_word"], GOOD.replace("office desk", "office desk with a guitar")]
    scores = reward([PROMPT] * 3, texts, image=[image] * 3)
    assert all(0.0 <= score <= 1.0 for score in scores) and scores[1] == 0.0
    with pytest.raises(ValueError, match="both"):
        VisualRelevanceReward(clip_model=CLIPModel(config))


def test_action_specificity_ranks_specific_above_vague_and_gaming():
    reward = ActionSpecificityReward()
    assert ranks_good_first(reward, {"vague": VAGUE, **GAMING}) == {}
    assert reward.score("she raises the hand") == pytest.approx(2 / 3)  # no direction, manner or timing
    assert reward.score("hand raise left slowly") == 0.0  # keyword stuffing: all four words are keywords
    assert reward.score("He is raising his left hand") == 1.0  # inflected verb forms count


def test_fluency_ranks_fluent_above_word_salad_and_gaming(fluent_lm):
    reward = FluencyReward(*fluent_lm)
    assert ranks_good_first(reward, {"word_salad": WORD_SALAD, **GAMING}) == {}
    assert 0.0 < reward([PROMPT], [GOOD])[0] < 1.0


def test_rewards_accept_conversational_completions():
    conversational = [[{"role": "assistant", "content": GOOD}]]
    for reward in (VisualRelevanceReward(), ActionSpecificityReward()):
        kwargs = {"attributes": [ATTRIBUTES]}
        assert reward([PROMPT], conversational, **kwargs) == reward([PROMPT], [GOOD], **kwargs)
