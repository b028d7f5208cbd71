"""Trains the SyncDreamer prompt enhancer: a LoRA on a Qwen2-VL family model, SFT warm start then GRPO (paper §3.3 C).

Data: a folder with reference images and a `metadata.jsonl`, one JSON object per line:
    {"file_name": "0001.png", "prompt": "wave hello", "attributes": {"clothing": "red jacket", ...},
     "target": "The woman in the red jacket raises her right hand and waves slowly at the camera."}
`attributes` is optional (extracted once with the base VLM when missing); `target`, a good enhanced prompt, is
only needed for the SFT warm start (`--sft_steps > 0`). The policy sees exactly what
`SyncDreamerPromptEnhancer.enhance` sends at inference: the image and `enhance_text(prompt, attributes)`.

GRPO ranks `--num_generations` sampled instructions per input by a weighted sum of the rewards in
`syncdreamer_hf.prompt_enhancer.rewards` (visual relevance, action specificity, fluency under the frozen base
model), each with penalties against repetition, runs of one word, overlong answers and unseen attributes.
The result is an enhancer folder (base model + `adapter/`) that `SyncDreamerPromptEnhancer.from_pretrained` and the
pipeline's `prompt_enhancer` component load; `--merge_adapter` writes one merged model instead.

CPU dry run (tiny random VLM, ~1 minute on one thread):
    python -c "from syncdreamer_hf.prompt_enhancer.tiny import build_tiny_qwen2_vl, build_toy_dataset; \
        build_tiny_qwen2_vl('tiny-vlm'); build_toy_dataset('toy-data')"
    OMP_NUM_THREADS=1 python training_scripts/train_prompt_enhancer.py --model_name_or_path tiny-vlm \
        --dataset_dir toy-data --output_dir enhancer-tiny --sft_steps 10 --grpo_steps 60 --use_cpu \
        --learning_rate 5e-2 --num_generations 8 --per_device_batch_size 16 --max_completion_length 16 \
        --lora_rank 8 --lora_alpha 16 --fluency_weight 0

The synthetic world's tiny enhancer (a word-level Qwen2-VL trained from scratch with `--full_finetune` and
`--world_weight`, SFT then GRPO): `training_scripts/build_prompt_enhancer_tiny.py` runs this script.

GPU recipe, Qwen2-VL-2B-Instruct (one 80 GB GPU; see training_scripts/README_prompt_enhancer.md):
    python training_scripts/train_prompt_enhancer.py --model_name_or_path Qwen/Qwen2-VL-2B-Instruct \
        --dataset_dir captions/ --output_dir syncdreamer-prompt-enhancer --bf16 \
        --lora_rank 64 --lora_alpha 128 --learning_rate 1e-5 --sft_learning_rate 1e-4 --sft_steps 500 \
        --grpo_steps 2000 --num_generations 8 --per_device_batch_size 16 --max_completion_length 96 \
        --beta 0.04 [--use_vllm] [--clip_model openai/clip-vit-large-patch14]
"""

import argparse
import json
import os

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from syncdreamer_hf.prompt_enhancer import (
    ActionSpecificityReward,
    FluencyReward,
    SyncDreamerPromptEnhancer,
    VisualRelevanceReward,
)
from syncdreamer_hf.prompt_enhancer.enhancer import chat_messages, enhance_text
from syncdreamer_hf.prompt_enhancer.world import WorldInstructionReward

# LoRA on the language model only: the vision tower's MLP shares the `*_proj` names in Qwen2.5-VL and Qwen3-VL.
LORA_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="a Qwen2-VL family model or enhancer folder")
    parser.add_argument("--dataset_dir", required=True, help="folder with images and metadata.jsonl")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--sft_steps", type=int, default=0, help="SFT warm-start steps on the `target` column")
    parser.add_argument("--grpo_steps", type=int, default=1000)
    parser.add_argument("--lora_rank", type=int, default=64)
    parser.add_argument("--lora_alpha", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-5, help="GRPO learning rate")
    parser.add_argument("--sft_learning_rate", type=float, default=1e-4)
    parser.add_argument("--num_generations", type=int, default=8, help="candidates ranked per input (GRPO group)")
    parser.add_argument("--per_device_batch_size", type=int, default=16, help="completions per step")
    parser.add_argument("--max_completion_length", type=int, default=96)
    parser.add_argument("--beta", type=float, default=0.0, help="KL weight to the base model")
    parser.add_argument("--relevance_weight", type=float, default=1.0)
    parser.add_argument("--specificity_weight", type=float, default=1.0)
    parser.add_argument("--fluency_weight", type=float, default=0.5)
    parser.add_argument("--world_weight", type=float, default=0.0,
                        help="synthetic-world instruction reward (needs `instructions` and `objects` columns)")
    parser.add_argument("--no_world_penalties", action="store_true",
                        help="the naive world reward (recall only), to measure reward gaming")
    parser.add_argument("--full_finetune", action="store_true",
                        help="train every weight instead of a LoRA (small enhancers built from scratch)")
    parser.add_argument("--sft_output_dir", default=None, help="also save the SFT-only enhancer here")
    parser.add_argument("--grpo_dataset_dir", default=None, help="GRPO prompts from here (default: --dataset_dir)")
    parser.add_argument("--max_words", type=int, default=80, help="length cap of the gaming penalty")
    parser.add_argument("--clip_model", default=None, help="CLIP model for visual relevance (else attribute recall)")
    parser.add_argument("--use_vllm", action="store_true", help="generate GRPO candidates with vLLM (colocate)")
    parser.add_argument("--use_cpu", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--merge_adapter", action="store_true", help="save one merged model instead of base+adapter")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_rows(dataset_dir: str, enhancer: SyncDreamerPromptEnhancer) -> Dataset:
    """metadata.jsonl -> Dataset(prompt: chat messages, image, attributes: JSON str[, completion: chat messages])."""
    path = os.path.join(dataset_dir, "metadata.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} not found; write one JSON object per line with `file_name` and `prompt` keys.")
    with open(path, encoding="utf-8") as file:
        records = [json.loads(line) for line in file if line.strip()]
    for record in records:
        if "file_name" not in record or "prompt" not in record:
            raise ValueError(f"every line of {path!r} needs `file_name` and `prompt` keys; got {sorted(record)}.")
    # a clip dataset captioned by build_captions.py names its reference frame in `reference_image`
    image_files = [record.get("reference_image", record["file_name"]) for record in records]
    images = [enhancer._resize(os.path.join(dataset_dir, file_name)) for file_name in image_files]
    missing = [i for i, record in enumerate(records) if "attributes" not in record]
    if missing and enhancer.config.use_attributes:  # step (B) once, with the base model
        extracted = enhancer.extract_attributes([images[i] for i in missing])
        for i, attributes in zip(missing, extracted):
            records[i]["attributes"] = attributes
    use_attributes = enhancer.config.use_attributes
    columns = {
        "prompt": [chat_messages(enhance_text(r["prompt"], r["attributes"] if use_attributes else None)) for r in records],
        "image": images,
        "attributes": [json.dumps(r.get("attributes", {})) for r in records],
    }
    for key in ("instructions", "objects"):  # the synthetic world's truth, read by WorldInstructionReward
        if all(key in record for record in records):
            columns[key] = [record[key] for record in records]
    if all("target" in record for record in records):
        columns["completion"] = [[{"role": "assistant", "content": r["target"]}] for r in records]
    return Dataset.from_dict(columns)


def reward_functions(args, enhancer: SyncDreamerPromptEnhancer) -> tuple[list, list[float]]:
    """The weighted rewards; weights of 0 leave a reward out (and its model unloaded)."""
    rewards, weights = [], []
    if args.relevance_weight:
        clip = {}
        if args.clip_model:
            from transformers import CLIPModel, CLIPProcessor

            clip_model, clip_processor = CLIPModel.from_pretrained(args.clip_model), CLIPProcessor.from_pretrained(args.clip_model)
            clip = {"clip_model": clip_model, "clip_processor": clip_processor}
        rewards.append(VisualRelevanceReward(max_words=args.max_words, **clip))
        weights.append(args.relevance_weight)
    if args.specificity_weight:
        rewards.append(ActionSpecificityReward(max_words=args.max_words))
        weights.append(args.specificity_weight)
    if args.world_weight:
        rewards.append(WorldInstructionReward(max_words=args.max_words, penalties=not args.no_world_penalties))
        weights.append(args.world_weight)
    if args.fluency_weight:  # the frozen base model, loaded apart from the policy that LoRA changes
        base = SyncDreamerPromptEnhancer.from_pretrained(args.model_name_or_path)
        rewards.append(FluencyReward(base.model, base.processor, max_words=args.max_words))
        weights.append(args.fluency_weight)
    return rewards, weights


def mean_reward(enhancer, dataset: Dataset, rewards, weights, num_samples: int = 4, seed: int = 0, **generate_kwargs):
    """Weighted reward of `num_samples` sampled instructions per row, averaged (what GRPO maximises)."""
    torch.manual_seed(seed)
    texts = [message[0]["content"][1]["text"] for message in dataset["prompt"]]
    images = list(dataset["image"])
    completions = enhancer.generate(
        images * num_samples, texts * num_samples, do_sample=True,
        suppress_tokens=vision_token_ids(enhancer.model.config), **generate_kwargs,
    )  # fmt: skip
    prompts = list(dataset["prompt"]) * num_samples
    columns = {key: list(dataset[key]) * num_samples for key in ("attributes", "instructions", "objects")
               if key in dataset.column_names}
    scores = [reward(prompts, completions, **columns) for reward in rewards]
    return sum(w * sum(s) / len(s) for w, s in zip(weights, scores))


def vision_token_ids(config) -> list[int]:
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [getattr(config, name) for name in names if getattr(config, name, None) is not None]


def common_config(args, steps: int, learning_rate: float) -> dict:
    return {
        "output_dir": args.output_dir,
        "max_steps": steps,
        "learning_rate": learning_rate,
        "per_device_train_batch_size": args.per_device_batch_size,
        "use_cpu": args.use_cpu,
        "bf16": args.bf16,
        "gradient_checkpointing": False,
        "logging_steps": max(1, steps // 10),
        "save_strategy": "no",
        "report_to": "none",
        "seed": args.seed,
    }


def main(argv=None):
    args = parse_args(argv)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    enhancer = SyncDreamerPromptEnhancer.from_pretrained(args.model_name_or_path, dtype=dtype)
    dataset = load_rows(args.dataset_dir, enhancer)
    peft_config = None if args.full_finetune else LoraConfig(
        r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGET_MODULES
    )
    log = {}
    model = enhancer.model

    if args.sft_steps:
        if "completion" not in dataset.column_names:
            raise ValueError("--sft_steps needs a `target` key on every line of metadata.jsonl; or pass --sft_steps 0.")
        sft_config = SFTConfig(**common_config(args, args.sft_steps, args.sft_learning_rate), max_length=None)
        sft = SFTTrainer(
            model=model,
            args=sft_config,
            train_dataset=dataset,
            processing_class=enhancer.processor,
            peft_config=peft_config,
        )
        sft.train()
        model, peft_config = sft.model, None  # GRPO continues the same adapter
        log["sft"] = sft.state.log_history
        if args.sft_output_dir:
            enhancer.model = model
            enhancer.save_pretrained(args.sft_output_dir)

    if args.grpo_steps:
        rewards, weights = reward_functions(args, enhancer)
        grpo_config = GRPOConfig(
            **common_config(args, args.grpo_steps, args.learning_rate),
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            beta=args.beta,
            reward_weights=weights,
            use_vllm=args.use_vllm,
            # an image placeholder in a completion breaks Qwen2-VL's 3D positions in the training forward
            generation_kwargs={"suppress_tokens": vision_token_ids(enhancer.model.config)},
        )
        if args.grpo_dataset_dir:
            dataset = load_rows(args.grpo_dataset_dir, enhancer)
        grpo = GRPOTrainer(
            model=model,
            reward_funcs=rewards,
            args=grpo_config,
            train_dataset=dataset.remove_columns([c for c in ["completion"] if c in dataset.column_names]),
            processing_class=enhancer.processor,
            peft_config=peft_config,
        )
        grpo.train()
        model = grpo.model
        log["grpo"] = grpo.state.log_history

    enhancer.model = model
    if "ref" in getattr(enhancer.model, "peft_config", {}):  # TRL's frozen reference copy when beta > 0
        enhancer.model.delete_adapter("ref")
    if args.merge_adapter:
        enhancer.merge_adapter()
    enhancer.save_pretrained(args.output_dir)
    with open(os.path.join(args.output_dir, "training_log.json"), "w", encoding="utf-8") as file:
        json.dump(log, file, indent=1)  # loss and reward curves
    if args.push_to_hub:
        enhancer.push_to_hub(args.push_to_hub)
    return enhancer


if __name__ == "__main__":
    main()
