"""Saves the tiny random-weight SyncDreamer pipeline (`pipelines/syncdreamer-tiny-random`, < 1 MB).

It loads and runs on CPU in about a second and produces noise: it exists so that `syncdreamer generate`, the
tests and the Hub layout work end to end before a trained model replaces it as the default.

    python scripts/make_tiny_random_pipeline.py --output pipelines/syncdreamer-tiny-random
"""

import argparse

import torch

from syncdreamer_hf.model_cards import write_model_card
from syncdreamer_hf.pipeline_syncdreamer import SyncDreamerPipeline
from syncdreamer_hf.tiny import TINY_PIPELINE_CONFIG, build_tiny_components


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="pipelines/syncdreamer-tiny-random")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    pipe = SyncDreamerPipeline(**build_tiny_components(seed=args.seed), **TINY_PIPELINE_CONFIG)
    pipe.save_pretrained(args.output)
    write_model_card(
        args.output,
        pipe,
        title="SyncDreamer tiny random",
        summary=(
            "Random weights at toy sizes (32x32 video, 9-frame windows). It produces noise: it exists to test the "
            "pipeline, the CLI and the Hub layout on CPU in seconds. It is not a trained model."
        ),
    )
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
