"""SyncDreamerPromptEnhancer on a tiny random Qwen2-VL built offline and loaded back like a user would."""

import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig

from syncdreamer_hf.prompt_enhancer import SyncDreamerPromptEnhancer, parse_attributes
from syncdreamer_hf.prompt_enhancer.rewards import ATTRIBUTE_KEYS
from syncdreamer_hf.prompt_enhancer.tiny import build_tiny_qwen2_vl

RED = PIL.Image.new("RGB", (40, 56), (200, 30, 30))
BLUE = PIL.Image.new("RGB", (64, 48), (30, 60, 200))


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def logits(enhancer, image=RED, text="wave hello") -> torch.Tensor:
    chat = enhancer.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}], add_generation_prompt=True
    )
    inputs = enhancer.processor(text=[chat], images=[enhancer._resize(image)], return_tensors="pt")
    with torch.no_grad():
        return enhancer.model(**inputs).logits


def with_random_lora(enhancer) -> SyncDreamerPromptEnhancer:
    torch.manual_seed(1)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    enhancer.model = get_peft_model(enhancer.model, config)
    return enhancer


def test_tiny_qwen2_vl_round_trips_and_enhance_returns_text(tiny_vlm_dir, tmp_path):
    enhancer = SyncDreamerPromptEnhancer.from_pretrained(tiny_vlm_dir)
    enhanced = enhancer.enhance(RED, "wave hello")
    assert isinstance(enhanced, str) and enhanced.strip()
    enhancer.save_pretrained(tmp_path)
    reloaded = SyncDreamerPromptEnhancer.from_pretrained(tmp_path)
    assert not (tmp_path / "adapter").exists()
    assert reloaded.config.image_size == enhancer.config.image_size == 32
    torch.testing.assert_close(logits(reloaded), logits(enhancer), rtol=0, atol=0)
    assert reloaded.enhance(RED, "wave hello") == enhanced


def test_lora_adapter_round_trips_into_adapter_subfolder(tiny_vlm_dir, tmp_path):
    base = SyncDreamerPromptEnhancer.from_pretrained(tiny_vlm_dir)
    base_logits = logits(base)
    enhancer = with_random_lora(SyncDreamerPromptEnhancer.from_pretrained(tiny_vlm_dir))
    adapted_logits = logits(enhancer)
    assert (adapted_logits - base_logits).abs().max() > 1e-3  # the adapter changes the model
    enhancer.save_pretrained(tmp_path)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    reloaded = SyncDreamerPromptEnhancer.from_pretrained(tmp_path)
    assert isinstance(reloaded.model, PeftModel)
    torch.testing.assert_close(logits(reloaded), adapted_logits, rtol=0, atol=0)
    # the base weights were saved under their original names: the base model alone is unchanged
    with reloaded.model.disable_adapter():
        torch.testing.assert_close(logits(reloaded), base_logits, rtol=0, atol=0)
    # an adapter can also be given explicitly, on top of a plain checkpoint
    explicit = SyncDreamerPromptEnhancer.from_pretrained(tiny_vlm_dir, adapter_name_or_path=tmp_path / "adapter")
    torch.testing.assert_close(logits(explicit), adapted_logits, rtol=0, atol=0)


def test_enhance_is_batched_and_deterministic(tiny_vlm_dir):
    enhancer = SyncDreamerPromptEnhancer.from_pretrained(tiny_vlm_dir)
    batch = enhancer.enhance([RED, BLUE], ["wave hello", "nod twice"])
    assert isinstance(batch, list) and len(batch) == 2 and all(isinstance(text, str) and text for text in batch)
    assert enhancer.enhance([RED, BLUE], ["wave hello", "nod twice"]) == batch
    assert enhancer.enhance(BLUE, "nod twice") == batch[1]
    with pytest.raises(ValueError, match="one reference image per prompt"):
        enhancer.enhance([RED, BLUE], ["wave hello"])


def test_enhance_falls_back_to_the_user_prompt_on_an_empty_answer(tiny_vlm_dir):
    enhancer = SyncDreamerPromptEnhancer.from_pretrained(tiny_vlm_dir)
    eos = enhancer.processor.tokenizer.eos_token_id
    assert enhancer.enhance(RED, "wave hello", forced_eos_token_id=eos, max_new_tokens=1) == "wave hello"


def test_extract_attributes_from_a_random_model_never_raises(tiny_vlm_dir):
    enhancer = SyncDreamerPromptEnhancer.from_pretrained(tiny_vlm_dir)
    attributes = enhancer.extract_attributes([RED, BLUE])
    assert [sorted(a) for a in attributes] == [sorted(ATTRIBUTE_KEYS)] * 2
    assert sorted(enhancer.extract_attributes(RED)) == sorted(ATTRIBUTE_KEYS)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ('{"clothing": "red jacket", "background": "office"}', {"clothing": "red jacket", "background": "office"}),
        ('Sure! ```json\n{"clothing": "red jacket", "objects": ["mug",],}\n```', {"clothing": "red jacket", "objects": ["mug"]}),
        ("{'clothing': 'red jacket', 'body_pose': 'sitting'}", {"clothing": "red jacket", "body_pose": "sitting"}),
        ('{"clothing": "red jacket", "objects": ["mug", "pen', {"clothing": "red jacket", "objects": ["mug", "pen"]}),
        ("clothing: blue shirt\nbackground: park", {"clothing": "blue shirt", "background": "park"}),
        ('{"clothing": {"top": "shirt"}, "objects": null, "extra": 1}', {"clothing": "{'top': 'shirt'}"}),
        ("I cannot see a person. }{ ][", {}),
        ("", {}),
    ],
)  # fmt: skip
def test_malformed_attribute_json_is_repaired_or_falls_back(answer, expected):
    assert parse_attributes(answer) == {key: expected.get(key, "") for key in ATTRIBUTE_KEYS}


def test_non_qwen2_vl_checkpoint_raises_a_value_error(tmp_path):
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Qwen2-VL family"):
        SyncDreamerPromptEnhancer.from_pretrained(tmp_path)


class EnhancerOnlyPipeline(DiffusionPipeline):
    def __init__(self, prompt_enhancer):
        super().__init__()
        self.register_modules(prompt_enhancer=prompt_enhancer)


def test_enhancer_saves_and_loads_as_a_diffusers_pipeline_component(tiny_vlm_dir, tmp_path):
    enhancer = with_random_lora(SyncDreamerPromptEnhancer.from_pretrained(tiny_vlm_dir))
    EnhancerOnlyPipeline(enhancer).save_pretrained(tmp_path)
    assert (tmp_path / "prompt_enhancer" / "adapter").is_dir()
    pipe = EnhancerOnlyPipeline.from_pretrained(tmp_path)
    assert isinstance(pipe.prompt_enhancer, SyncDreamerPromptEnhancer)
    assert isinstance(pipe.prompt_enhancer.model, PeftModel)
    torch.testing.assert_close(logits(pipe.prompt_enhancer), logits(enhancer), rtol=0, atol=0)
