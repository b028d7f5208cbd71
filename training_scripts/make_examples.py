"""Writes the bundled example inputs: `examples/reference.png` (a drawn face) and `examples/speech.wav`
(2 s of syllable-like noise bursts at 16 kHz), small enough to keep in the repository.

    python training_scripts/make_examples.py --output examples
"""

import argparse
import wave
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw


def draw_face(size: int = 256) -> PIL.Image.Image:
    image = PIL.Image.new("RGB", (size, size), (70, 110, 160))
    draw = PIL.ImageDraw.Draw(image)
    s = size / 256
    draw.ellipse([68 * s, 40 * s, 188 * s, 190 * s], fill=(235, 195, 160))  # face
    draw.pieslice([60 * s, 25 * s, 196 * s, 130 * s], 180, 360, fill=(60, 40, 30))  # hair
    for x in (98, 158):
        draw.ellipse([(x - 10) * s, 100 * s, (x + 10) * s, 112 * s], fill=(40, 40, 40))  # eyes
    draw.ellipse([110 * s, 150 * s, 146 * s, 162 * s], fill=(170, 60, 70))  # mouth
    draw.rectangle([78 * s, 190 * s, 178 * s, 256 * s], fill=(200, 50, 50))  # shirt
    return image


def syllables(seconds: float = 2.0, sample_rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    envelope = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) ** 2
    voice = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t)
    noise = np.random.default_rng(0).standard_normal(len(t)) * 0.2
    return (0.3 * envelope * (voice + noise)).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="examples")
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    draw_face().save(output / "reference.png")
    with wave.open(str(output / "speech.wav"), "wb") as file:
        file.setnchannels(1), file.setsampwidth(2), file.setframerate(16000)
        file.writeframes((syllables() * 32767).astype(np.int16).tobytes())
    print(f"wrote {output / 'reference.png'} and {output / 'speech.wav'}")


if __name__ == "__main__":
    main()
