#!/usr/bin/env python
"""Writes a PNG strip of a video to look at: the reference image, then every `--every`-th frame and the last one,
scaled up `--scale` times (nearest neighbour, so a 64x64 frame's pixels stay visible). Several videos give one row
each, labelled with their file names.

    python scripts/frame_strip.py --reference examples/reference.png --videos out.mp4 --output strip.png
"""

import argparse
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw


def read_frames(path: str) -> list[np.ndarray]:
    """Every frame of the video's first video stream, `(H, W, 3)` uint8."""
    with av.open(path) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def strip_row(reference: Image.Image, frames: list[np.ndarray], every: int, scale: int) -> Image.Image:
    """The reference, then frames 0, every, 2 every, ... and the last, side by side at the frames' size x scale."""
    height, width = frames[0].shape[:2]
    picked = list(range(0, len(frames), every))
    if picked[-1] != len(frames) - 1:
        picked.append(len(frames) - 1)
    tiles = [reference.convert("RGB").resize((width, height))] + [Image.fromarray(frames[i]) for i in picked]
    row = Image.new("RGB", (len(tiles) * (width + 2) * scale, height * scale), "white")
    for k, tile in enumerate(tiles):
        row.paste(tile.resize((width * scale, height * scale), Image.NEAREST), (k * (width + 2) * scale, 0))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="the reference image the videos were generated from")
    parser.add_argument("--videos", nargs="+", required=True, help="one row per video")
    parser.add_argument("--output", required=True, help="the .png to write")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args(argv)

    reference = Image.open(args.reference)
    rows = [strip_row(reference, read_frames(video), args.every, args.scale) for video in args.videos]
    label_height = 14
    sheet = Image.new("RGB", (max(row.width for row in rows), len(rows) * (rows[0].height + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (video, row) in enumerate(zip(args.videos, rows)):
        top = k * (rows[0].height + label_height)
        draw.text((2, top), Path(video).name, fill="black")
        sheet.paste(row, (0, top + label_height))
    sheet.save(args.output)
    print(f"wrote {args.output} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
