"""training_scripts/build_captions.py: step (A), one reference frame per clip captioned into `metadata.jsonl`."""

import json

import numpy as np
import PIL.Image

from syncdreamer_hf.media import save_video
from syncdreamer_hf.prompt_enhancer.tiny import build_tiny_qwen2_vl
from _scripts import load_script



def test_captions_the_middle_frame_of_each_clip(tmp_path):
    dataset = tmp_path / "clips"
    dataset.mkdir()
    rows = []
    for index, colour in enumerate([(220, 20, 20), (20, 20, 220), (20, 200, 20)]):
        frames = np.zeros((9, 32, 32, 3), np.uint8)
        frames[4] = colour  # only the middle frame has the clip's colour
        save_video(frames, dataset / f"clip_{index}.mp4", fps=25)
        rows.append({"file_name": f"clip_{index}.mp4", "caption": f"clip {index}"})
    rows[2]["prompt"] = "nod twice"  # already captioned: kept
    (dataset / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    load_script("build_captions").main(["--dataset_dir", str(dataset), "--model_name_or_path",
                        build_tiny_qwen2_vl(tmp_path / "vlm"), "--max_new_tokens", "6", "--batch_size", "2"])

    written = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    assert [row["file_name"] for row in written] == [row["file_name"] for row in rows]
    assert written[2]["prompt"] == "nod twice" and "reference_image" not in written[2]
    for row, colour in zip(written[:2], [(220, 20, 20), (20, 20, 220)]):
        assert isinstance(row["prompt"], str) and row["prompt"].strip()
        reference = np.asarray(PIL.Image.open(dataset / row["reference_image"]).convert("RGB"), dtype=float)
        assert np.abs(reference.mean(axis=(0, 1)) - colour).max() < 25  # the middle frame, not the first
