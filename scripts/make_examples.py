"""Writes the bundled example inputs of the synthetic avatar world, which the default model (SyncDreamer-Tiny) knows:
`examples/reference.png` (a held-out identity at rest, 64x64, never trained on), `examples/speech.wav` (4 s of
held-out synthetic speech, 16 kHz) and `examples/prompt.txt` (an instruction the model was trained to follow).

    python scripts/make_examples.py --output examples
"""

import argparse
import wave
from pathlib import Path

import numpy as np

from syncdreamer_hf.data import synthetic as world

EXAMPLE_INDEX = 1000  # a held-out clip index far from the benchmark's first clips
PROMPT = "raise the right hand"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="examples")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    seed = world.clip_seed(0, "heldout", EXAMPLE_INDEX)
    world.render_reference_image(world.sample_identity(seed, "heldout")).save(output / "reference.png")
    speech = world.synthesize_speech(args.seconds, seed, "heldout")
    with wave.open(str(output / "speech.wav"), "wb") as file:
        file.setnchannels(1), file.setsampwidth(2), file.setframerate(world.SAMPLE_RATE)
        file.writeframes((np.clip(speech, -1, 1) * 32767).astype(np.int16).tobytes())
    (output / "prompt.txt").write_text(PROMPT + "\n")
    print(f"wrote {output / 'reference.png'}, {output / 'speech.wav'} and {output / 'prompt.txt'}")


if __name__ == "__main__":
    main()
