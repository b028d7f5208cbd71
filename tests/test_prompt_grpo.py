"""train_prompt_enhancer.py on CPU with a tiny random Qwen2-VL: GRPO raises the reward on held-out (image, prompt)
pairs, SFT fits the targets, and the trained adapter saves, reloads and merges without changing the logits."""


import pytest
import torch
from peft import PeftModel

from syncdreamer_hf.prompt_enhancer import SyncDreamerPromptEnhancer
from syncdreamer_hf.prompt_enhancer.tiny import build_tiny_qwen2_vl, build_toy_dataset
from _scripts import load_script

GRPO_ARGS = (
    "--use_cpu --seed 0 --sft_steps 0 --grpo_steps 120 --learning_rate 5e-2 --num_generations 8 "
    "--per_device_batch_size 16 --max_completion_length 16 --lora_rank 8 --lora_alpha 16 --fluency_weight 0"
)


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    """(script, base enhancer, trained enhancer, held-out rows, rewards, weights, output dir)."""
    root = tmp_path_factory.mktemp("grpo")
    train = load_script("train_prompt_enhancer")
    model_dir = build_tiny_qwen2_vl(root / "tiny-vlm")
    build_toy_dataset(root / "train", num_rows=16, seed=0)
    build_toy_dataset(root / "held_out", num_rows=8, seed=1)
    argv = [
        "--model_name_or_path", model_dir, "--dataset_dir", str(root / "train"), "--output_dir", str(root / "out"),
        *GRPO_ARGS.split(),
    ]  # fmt: skip
    base = SyncDreamerPromptEnhancer.from_pretrained(model_dir)
    held_out = train.load_rows(str(root / "held_out"), base)
    rewards, weights = train.reward_functions(train.parse_args(argv), base)
    trained = train.main(argv)
    return train, base, trained, held_out, rewards, weights, root / "out"


def test_grpo_raises_mean_reward_on_held_out_pairs(grpo_run):
    train, base, trained, held_out, rewards, weights, _ = grpo_run
    before = train.mean_reward(base, held_out, rewards, weights, num_samples=8, max_new_tokens=16)
    after = train.mean_reward(trained, held_out, rewards, weights, num_samples=8, max_new_tokens=16)
    assert after > before + 0.1, (before, after)


def test_trained_adapter_saves_reloads_and_merges_with_identical_logits(grpo_run):
    _, _, trained, held_out, _, _, output_dir = grpo_run
    assert (output_dir / "adapter" / "adapter_config.json").is_file()
    reloaded = SyncDreamerPromptEnhancer.from_pretrained(output_dir)
    assert isinstance(reloaded.model, PeftModel)
    chat = reloaded.processor.apply_chat_template(held_out[0]["prompt"], add_generation_prompt=True)
    inputs = reloaded.processor(text=[chat], images=[held_out[0]["image"]], return_tensors="pt")
    with torch.no_grad():
        trained_logits = trained.model(**inputs).logits
        reloaded_logits = reloaded.model(**inputs).logits
        with reloaded.model.disable_adapter():
            base_logits = reloaded.model(**inputs).logits
        merged_logits = reloaded.merge_adapter().model(**inputs).logits
    assert not isinstance(reloaded.model, PeftModel)
    torch.testing.assert_close(reloaded_logits, trained_logits, rtol=0, atol=0)
    # merging adds B @ A into W in float32: equal up to rounding (the summation order differs between CPUs), and
    # far closer than the base model without the adapter
    merge_error = (merged_logits - trained_logits).abs().max()
    assert merge_error < 1e-3 and merge_error < 0.01 * (base_logits - trained_logits).abs().max(), merge_error


def test_sft_warm_start_fits_the_targets(tmp_path):
    train = load_script("train_prompt_enhancer")
    model_dir = build_tiny_qwen2_vl(tmp_path / "tiny-vlm")
    build_toy_dataset(tmp_path / "train", num_rows=8)
    argv = [
        "--model_name_or_path", model_dir, "--dataset_dir", str(tmp_path / "train"), "--output_dir",
        str(tmp_path / "out"), "--use_cpu", "--sft_steps", "30", "--grpo_steps", "0", "--sft_learning_rate", "1e-2",
        "--per_device_batch_size", "8", "--lora_rank", "8", "--lora_alpha", "16",
    ]  # fmt: skip

    def target_loss(enhancer):
        rows = train.load_rows(str(tmp_path / "train"), enhancer)
        row = rows[0]
        chat = enhancer.processor.apply_chat_template(row["prompt"] + row["completion"])
        prompt = enhancer.processor.apply_chat_template(row["prompt"], add_generation_prompt=True)
        inputs = enhancer.processor(text=[chat], images=[row["image"]], return_tensors="pt")
        prompt_length = enhancer.processor(text=[prompt], images=[row["image"]])["input_ids"][0].__len__()
        labels = inputs["input_ids"].clone()
        labels[:, :prompt_length] = -100  # the loss of the target instruction only
        with torch.no_grad():
            return enhancer.model(**inputs, labels=labels).loss.item()

    before = target_loss(SyncDreamerPromptEnhancer.from_pretrained(model_dir))
    after = target_loss(train.main(argv))
    assert after < 0.5 * before, (before, after)
