"""Does a SyncDreamer-Tiny raise the hand its prompt names, or both? And is the side decoded by the conditional model
or lost in guidance?

For the first `--identities` identities of the train and the held-out split (the clips `write_clip_dataset` and the
benchmark draw first), each prompted with "raise the right hand", "raise the left hand", "wave with the right hand"
and "turn the head to the left" (2 s of the identity's own synthetic speech, seed 0), the generated video is
measured with `evaluation.synthetic` (highest hand of each side, 1 = raised to head level; the detected motions).
`--mirrored_negative` uses the mirrored instruction ("raise the left hand") as the negative prompt of text guidance,
`--no-mirrored_negative` the empty prompt (the pipeline's `mirrored_negative_prompt`; neither: the config's default).

    OMP_NUM_THREADS=1 python training_scripts/probe_hand_side.py --model pipelines/syncdreamer-tiny
    OMP_NUM_THREADS=1 python training_scripts/probe_hand_side.py --model pipelines/syncdreamer-tiny --guidance_scale 1
"""

import argparse
import json

import numpy as np
import torch

from syncdreamer_hf import SyncDreamerPipeline
from syncdreamer_hf.data import synthetic as world
from syncdreamer_hf.evaluation.synthetic import RAISED_HAND_HEIGHT, analyze_video, detect_motions

PROMPTED = ("raise_right_hand", "raise_left_hand", "wave_right_hand", "turn_head_left")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pipelines/syncdreamer-tiny")
    parser.add_argument("--identities", type=int, default=3, help="per split")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--guidance_scale", type=float, default=None, help="text guidance (default: the model's)")
    parser.add_argument("--guidance_end", type=float, default=None, help="(default: the model's)")
    parser.add_argument("--mirrored_negative", action=argparse.BooleanOptionalAction, default=None,
                        help="the mirrored instruction as negative prompt (default: the pipeline config's)")
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    pipe = SyncDreamerPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for split in world.SPLITS:
        for index in range(args.identities):
            seed = world.clip_seed(0, split, index)
            image = world.render_reference_image(world.sample_identity(seed, split))
            audio = world.synthesize_speech(args.seconds, seed, split)
            for name in PROMPTED:
                output = pipe(image=image, audio=audio, sample_rate=world.SAMPLE_RATE, prompt=world.short_prompt([name]),
                              mirrored_negative_prompt=args.mirrored_negative, guidance_scale=args.guidance_scale,
                              guidance_end=args.guidance_end, generator=torch.Generator().manual_seed(0))
                measured = analyze_video((output.frames[0] * 255).round().astype(np.uint8))
                row = {"split": split, "identity": index, "prompt": name,
                       "right_hand": float(measured.hands["right"].max()), "left_hand": float(measured.hands["left"].max()),
                       "detected": sorted(detect_motions(measured, 25.0))}
                rows.append(row)
                print(f"{split:8s} {index} {name:17s} right {row['right_hand']:.2f} left {row['left_hand']:.2f} "
                      f"{row['detected']}", flush=True)
    hands = [row for row in rows if row["prompt"] != "turn_head_left"]
    raised = [(row[f"{side}_hand"] > RAISED_HAND_HEIGHT, row[f"{other}_hand"] > RAISED_HAND_HEIGHT)
              for row in hands for side, other in [("right", "left") if "right" in row["prompt"] else ("left", "right")]]
    turns = [row for row in rows if row["prompt"] == "turn_head_left"]
    summary = {"hand_prompts": len(hands), "asked_side_only": sum(a and not o for a, o in raised),
               "both_sides": sum(a and o for a, o in raised),
               "turn_head_left_detected": sum("turn_head_left" in row["detected"] for row in turns),
               "turn_prompts": len(turns)}
    print(json.dumps(summary))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"settings": vars(args), "summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
