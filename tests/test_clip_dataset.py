"""The clip-dataset folder format: metadata.jsonl validation, paths kept inside the folder, `datasets` loading."""

import json

import pytest

from syncdreamer_hf.data.clip_dataset import load_clip_dataset, load_clip_metadata


def make_folder(root, lines):
    root.mkdir(exist_ok=True)
    for name in ("clip_00000.mp4", "clip_00001.mp4", "clip_00000_masks.npz"):
        (root / name).write_bytes(b"x")
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(line) if isinstance(line, dict) else line for line in lines))
    return root


GOOD = [
    {"file_name": "clip_00000.mp4", "caption": "a person talks", "prompt": "talks", "masks": "clip_00000_masks.npz",
     "attributes": {"shirt": "red"}},
    {"file_name": "clip_00001.mp4", "caption": "a person sings", "enhanced_caption": "a singer, smiling"},
]


def test_valid_folder_gives_absolute_paths(tmp_path):
    records = load_clip_metadata(make_folder(tmp_path / "clips", GOOD))
    assert [r["file_name"] for r in records] == ["clip_00000.mp4", "clip_00001.mp4"]
    assert records[0]["video_path"] == str((tmp_path / "clips" / "clip_00000.mp4").resolve())
    assert records[0]["masks_path"].endswith("clip_00000_masks.npz") and records[1]["masks_path"] is None


def test_readable_with_datasets(tmp_path):
    dataset = load_clip_dataset(make_folder(tmp_path / "clips", GOOD))
    assert len(dataset) == 2 and dataset[1]["enhanced_caption"] == "a singer, smiling"
    assert json.loads(dataset[0]["attributes"]) == {"shirt": "red"} and dataset[1]["masks_path"] is None
    import datasets  # the raw metadata.jsonl is a plain json dataset too

    raw = datasets.load_dataset("json", data_files=str(tmp_path / "clips" / "metadata.jsonl"), split="train")
    assert raw["file_name"] == ["clip_00000.mp4", "clip_00001.mp4"]


@pytest.mark.parametrize(
    "line,message",
    [
        ({"file_name": "../outside.mp4", "caption": "x"}, "leaves the dataset folder"),
        ({"file_name": "/etc/passwd", "caption": "x"}, "is absolute"),
        ({"file_name": "clip_00000.mp4", "caption": "x", "masks": "../../m.npz"}, "leaves the dataset folder"),
        ({"file_name": "clip_00000.mp4"}, "missing required field `caption`"),
        ({"caption": "x"}, "missing required field `file_name`"),
        ({"file_name": "missing.mp4", "caption": "x"}, "does not exist"),
        ({"file_name": "clip_00000.mp4", "caption": 3}, "`caption` must be a string"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_lines_are_refused_with_the_line_number(tmp_path, line, message):
    (tmp_path / "outside.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match=message) as error:
        load_clip_metadata(make_folder(tmp_path / "clips", [GOOD[1], line]))
    assert "line 2" in str(error.value)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.mp4").write_bytes(b"x")
    root = make_folder(tmp_path / "clips", [{"file_name": "link.mp4", "caption": "x"}])
    (root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    with pytest.raises(ValueError, match="leaves the dataset folder"):
        load_clip_metadata(root)


def test_duplicates_and_missing_metadata(tmp_path):
    with pytest.raises(ValueError, match="listed twice"):
        load_clip_metadata(make_folder(tmp_path / "clips", [GOOD[1], GOOD[1]]))
    with pytest.raises(ValueError, match="no metadata.jsonl"):
        load_clip_metadata(tmp_path / "empty")
