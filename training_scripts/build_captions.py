"""Step (A) of the prompt enhancer's data (paper §3.3): one reference frame per clip, captioned by a VLM into a
short prompt.

Reads a clip dataset folder (mp4 clips + `metadata.jsonl` with at least `file_name` and `caption`), saves the
middle frame of each clip as `reference_frames/<clip>.png`, asks the VLM for a short motion caption and writes
two keys back into each line of `metadata.jsonl`: `reference_image` (the png, relative to the folder) and
`prompt` (the short caption). `train_prompt_enhancer.py --dataset_dir <folder>` then trains on these rows.

    python training_scripts/build_captions.py --dataset_dir clips/ --model_name_or_path Qwen/Qwen2-VL-2B-Instruct
"""

import argparse
import json
import os

import av
import PIL.Image

from syncdreamer_hf.prompt_enhancer import SyncDreamerPromptEnhancer

CAPTION_INSTRUCTION = (
    "In at most ten words, say what the person in this video frame is doing with their head, hands or body."
)


def middle_frame(path: str) -> PIL.Image.Image:
    """The frame halfway through a video, decoded with PyAV: seek to the keyframe before the middle, then decode
    forward to it (long clips are not decoded in full)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        middle = (stream.start_time or 0) + (stream.duration or 0) // 2
        container.seek(middle, stream=stream)
        frame = None
        for decoded in container.decode(stream):
            if frame is not None and decoded.pts is not None and decoded.pts > middle:
                break
            frame = decoded  # the last frame that starts at or before the middle
    if frame is None:
        raise ValueError(f"video file {path!r} contains no frames.")
    return frame.to_image()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, help="folder of mp4 clips with a metadata.jsonl")
    parser.add_argument("--model_name_or_path", default="Qwen/Qwen2-VL-2B-Instruct")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true", help="recaption rows that already have a `prompt`")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    path = os.path.join(args.dataset_dir, "metadata.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} not found; a clip dataset needs a metadata.jsonl with `file_name` and `caption`.")
    with open(path, encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    enhancer = SyncDreamerPromptEnhancer.from_pretrained(args.model_name_or_path)
    os.makedirs(os.path.join(args.dataset_dir, "reference_frames"), exist_ok=True)

    todo = [row for row in rows if args.overwrite or "prompt" not in row]
    for start in range(0, len(todo), args.batch_size):
        batch = todo[start : start + args.batch_size]
        frames = []
        for row in batch:
            row["reference_image"] = os.path.join("reference_frames", os.path.splitext(row["file_name"])[0] + ".png")
            frames.append(middle_frame(os.path.join(args.dataset_dir, row["file_name"])))
            frames[-1].save(os.path.join(args.dataset_dir, row["reference_image"]))
        captions = enhancer.generate(frames, [CAPTION_INSTRUCTION] * len(batch), max_new_tokens=args.max_new_tokens)
        for row, caption in zip(batch, captions):
            row["prompt"] = caption or row["caption"]  # an empty answer keeps the dataset's own caption

    with open(path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
