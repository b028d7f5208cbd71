"""Builds the tiny prompt enhancer of the synthetic avatar world: a random word-level Qwen2-VL, trained from scratch
by `train_prompt_enhancer.py` (SFT on (reference image, user prompt) -> the world's exact instruction phrase, then
GRPO with `WorldInstructionReward`), measured on held-out identities and held-out user prompts.

Writes, under `--output_dir`:
    tiny/          the GRPO enhancer (safetensors, model card): a pipeline's `prompt_enhancer` component
    tiny-sft/      the SFT-only enhancer (the ablation row)
    report.json    reward/loss curves, before/after tables, the reward-gaming check
    tiny-naive/    with --naive_grpo_steps: GRPO from tiny-sft with the naive reward (does it game it?)
    base/, data/   the random base model and the training data

    OMP_NUM_THREADS=1 python training_scripts/build_prompt_enhancer_tiny.py --output_dir outputs/prompt_enhancer
"""

import argparse
import json
import os
import sys

import torch
import train_prompt_enhancer as train  # this script's folder is on sys.path

from syncdreamer_hf.data import synthetic as world
from syncdreamer_hf.prompt_enhancer import SyncDreamerPromptEnhancer
from syncdreamer_hf.prompt_enhancer.world import (
    WorldInstructionReward,
    build_world_vlm,
    score_enhancer,
    world_row,
    write_world_dataset,
)

GAMING_ROW = {"instructions": ["wave_right_hand"], "objects": ["pen"]}  # "say hi to everyone", holding a pen
GAMING_COMPLETIONS = {
    "the exact phrase": "wave with the right hand while holding a pen",
    "every instruction at once": " and ".join(imperative for imperative, _ in world.INSTRUCTIONS.values())
    + " while holding a pen",
    "the phrase repeated": "wave with the right hand and wave with the right hand while holding a pen and a pen",
    "one word repeated": "wave wave wave wave hand hand hand pen pen",
    "filler words": "please now wave with the right hand nicely and happily while holding a pen yes",
    "object dropped": "wave with the right hand",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/prompt_enhancer")
    parser.add_argument("--train_rows", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.5, help="share of SFT prompts with noise words")
    parser.add_argument("--grpo_rows", type=int, default=1000, help="GRPO prompts (other training rows)")
    parser.add_argument("--grpo_noise", type=float, default=1.0, help="share of GRPO prompts with noise words")
    parser.add_argument(
        "--unknown",
        type=float,
        default=0.0,
        help="word dropout of the SFT prompts: each word but the side/direction words and object names becomes a "
        "made-up word ([UNK], as held-out-only words are) with this probability",
    )
    parser.add_argument("--grpo_unknown", type=float, default=0.0, help="the same word dropout, on the GRPO prompts")
    parser.add_argument("--heldout_rows", type=int, default=200)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--sft_steps", type=int, default=600)
    parser.add_argument("--sft_learning_rate", type=float, default=3e-3)
    parser.add_argument("--grpo_steps", type=int, default=100)
    parser.add_argument("--learning_rate", type=float, default=3e-4, help="GRPO learning rate")
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--per_device_batch_size", type=int, default=32)
    parser.add_argument("--table_rows", type=int, default=12, help="held-out prompts shown before/after GRPO")
    parser.add_argument(
        "--naive_grpo_steps",
        type=int,
        default=0,
        help="also run GRPO from the SFT model with the naive reward (the reward-gaming check)",
    )
    parser.add_argument("--skip_training", action="store_true", help="measure and write the cards of a finished build")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


ROWS = {"base": "random init", "tiny-sft": "SFT only", "tiny": "SFT + GRPO", "tiny-naive": "SFT + GRPO, naive reward"}


def train_argv(args, model_dir: str, output_dir: str, sft_steps: int, grpo_steps: int, *extra) -> list[str]:
    return [
        "--model_name_or_path", model_dir, "--dataset_dir", os.path.join(args.output_dir, "data", "train"),
        "--output_dir", output_dir, "--use_cpu", "--full_finetune", "--seed", str(args.seed),
        "--sft_steps", str(sft_steps), "--sft_learning_rate", str(args.sft_learning_rate),
        "--grpo_steps", str(grpo_steps), "--learning_rate", str(args.learning_rate),
        "--num_generations", str(args.num_generations), "--per_device_batch_size", str(args.per_device_batch_size),
        "--max_completion_length", "20", "--max_words", "20", "--world_weight", "1",
        "--relevance_weight", "0", "--specificity_weight", "0", "--fluency_weight", "0",
        "--grpo_dataset_dir", os.path.join(args.output_dir, "data", "grpo"), *extra,
    ]  # fmt: skip


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def write_cards(out: str, report: dict, command: str) -> None:
    """The model cards of tiny/ and tiny-sft/, with the measured tables."""
    from syncdreamer_hf.model_cards import render_component_card

    heldout = report["heldout"]
    heldout_table = markdown_table(
        ["enhancer", "instructions", "unasked", "objects", "exact", "reward"],
        [[ROWS[name], *(f"{heldout[name][key]:.1%}" for key in ("instructions", "unasked", "objects", "exact")),
          f"{heldout[name]['reward']:.3f}"] for name in heldout],
    )  # fmt: skip
    completions_table = markdown_table(
        ["user prompt", "held", "world phrase (target)", "SFT only", "SFT + GRPO"],
        [[row["prompt"], ", ".join(row["objects"]) or "-", row["target"], row["tiny-sft"], row["tiny"]]
         for row in report["table"]],
    )  # fmt: skip
    gaming_table = markdown_table(
        ["completion for \"say hi to everyone\", holding a pen", "text", "naive reward", "our reward"],
        [[label, GAMING_COMPLETIONS[label], f"{value['naive (recall only)']:.2f}", f"{value['penalised']:.2f}"]
         for label, value in report["gaming"].items()],
    )  # fmt: skip
    if "tiny-naive" in report.get("naive_grpo", {}):
        naive = report["naive_grpo"]
        gaming_table += (
            f"\n\nGRPO from the same SFT model for {naive['steps']} steps with the naive reward instead: mean naive "
            f"reward {naive['naive_reward_before']:.3f} -> {naive['naive_reward_after']:.3f}, held-out unasked "
            f"motions {heldout['tiny-sft']['unasked']:.1%} -> {naive['tiny-naive']['unasked']:.1%}, exact phrase "
            f"{heldout['tiny-sft']['exact']:.1%} -> {naive['tiny-naive']['exact']:.1%}; e.g. "
            + "; ".join(f'"{row["prompt"]}" -> "{row["tiny-naive"]}"' for row in naive["examples"])
        )
    curve = ", ".join(f"{step}: {reward:.3f}" for step, reward in report["reward_curve"])
    for name, stage in (("tiny", "SFT warm start, then GRPO"), ("tiny-sft", "SFT only (the GRPO model's warm start)")):
        enhancer = SyncDreamerPromptEnhancer.from_pretrained(os.path.join(out, name))
        card = render_component_card(
            enhancer, "prompt_enhancer_world.md", library_name="transformers",
            model_type=enhancer.model.config.model_type, stage=stage, heldout_rows=report["settings"]["heldout_rows"],
            heldout_table=heldout_table, completions_table=completions_table, gaming_table=gaming_table,
            reward_curve=curve, num_generations=report["settings"]["num_generations"], command=command,
        )  # fmt: skip
        card.save(os.path.join(out, name, "README.md"))


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    out = args.output_dir
    heldout = [world_row(index, "heldout", args.seed) for index in range(args.heldout_rows)]
    if not args.skip_training:
        base_dir = build_world_vlm(os.path.join(out, "base"), hidden_size=args.hidden_size, seed=args.seed)
        write_world_dataset(os.path.join(out, "data", "train"), args.train_rows, "train", args.seed, args.noise,
                            args.unknown)  # fmt: skip
        write_world_dataset(os.path.join(out, "data", "grpo"), args.grpo_rows, "train", args.seed + 1, args.grpo_noise,
                            args.grpo_unknown)  # fmt: skip
        sft_dir = os.path.join(out, "tiny-sft")
        train.main(train_argv(args, base_dir, os.path.join(out, "tiny"), args.sft_steps, args.grpo_steps,
                              "--sft_output_dir", sft_dir))  # fmt: skip

    scores = {
        name: score_enhancer(SyncDreamerPromptEnhancer.from_pretrained(os.path.join(out, name)), heldout)
        for name in ("base", "tiny-sft", "tiny")
    }
    rewards = {"penalised": WorldInstructionReward(), "naive (recall only)": WorldInstructionReward(penalties=False)}
    gaming = {
        label: {name: reward.score(text, **GAMING_ROW) for name, reward in rewards.items()}
        for label, text in GAMING_COMPLETIONS.items()
    }
    with open(os.path.join(out, "tiny", "training_log.json"), encoding="utf-8") as file:
        log = json.load(file)
    report = {
        "settings": vars(args),
        "heldout": {name: {k: v for k, v in score.items() if k != "completions"} for name, score in scores.items()},
        "table": [{"prompt": row["prompt"], "objects": row["objects"], "target": row["target"],
                   **{name: scores[name]["completions"][i] for name in scores}}
                  for i, row in enumerate(heldout[: args.table_rows])],
        "gaming": gaming,
        "reward_curve": [(entry["step"], entry["reward"]) for entry in log.get("grpo", []) if "reward" in entry],
        "sft_loss_curve": [(entry["step"], entry["loss"]) for entry in log.get("sft", []) if "loss" in entry],
    }  # fmt: skip
    if args.naive_grpo_steps:  # the same GRPO from the SFT model with the naive reward: does it game it?
        naive_dir = os.path.join(out, "tiny-naive")
        train.main(train_argv(args, os.path.join(out, "tiny-sft"), naive_dir, 0, args.naive_grpo_steps,
                              "--no_world_penalties"))  # fmt: skip
        naive = score_enhancer(SyncDreamerPromptEnhancer.from_pretrained(naive_dir), heldout)
        naive_reward = WorldInstructionReward(penalties=False)

        def mean_naive(completions):
            return sum(
                naive_reward.score(c, r["instructions"], r["objects"]) for c, r in zip(completions, heldout)
            ) / len(heldout)

        report["naive_grpo"] = {
            "steps": args.naive_grpo_steps,
            "tiny-naive": {k: v for k, v in naive.items() if k != "completions"},
            "naive_reward_before": mean_naive(scores["tiny-sft"]["completions"]),
            "naive_reward_after": mean_naive(naive["completions"]),
            "examples": [{"prompt": r["prompt"], "tiny-naive": c} for r, c in zip(heldout[:3], naive["completions"])],
        }
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=1)
    write_cards(out, report, "OMP_NUM_THREADS=1 python training_scripts/build_prompt_enhancer_tiny.py "
                + " ".join(a for a in (sys.argv[1:] if argv is None else argv) if a != "--skip_training"))  # fmt: skip
    print(json.dumps({key: report[key] for key in ("heldout", "gaming", "reward_curve")}, indent=1))
    return report


if __name__ == "__main__":
    main()
