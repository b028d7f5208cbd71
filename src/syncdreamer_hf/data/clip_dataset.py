"""The clip-dataset folder format: mp4 clips (video + audio track) and a `metadata.jsonl` describing them.

```
my_clips/
  metadata.jsonl          one JSON object per line, one line per clip
  clip_00000.mp4          H.264/any video + AAC/any audio, any size and fps
  clip_00000_masks.npz    optional: one (F, H, W) uint8/bool array per region (eyes, mouth, hair, jaw, hands)
```

A metadata line: `{"file_name": "clip_00000.mp4", "caption": "...", "prompt": "...", "enhanced_caption": "...",
"masks": "clip_00000_masks.npz", "attributes": {...}}`. Only `file_name` and `caption` are required; file paths
are relative to the folder and may not leave it. `load_clip_metadata` validates a folder and returns the records;
`load_clip_dataset` returns them as a `datasets.Dataset` (the same `metadata.jsonl` + `file_name` layout the
`datasets` folder builders use).
"""

import json
from pathlib import Path

METADATA_FILE = "metadata.jsonl"
PATH_FIELDS = ("file_name", "masks")
TEXT_FIELDS = ("caption", "prompt", "enhanced_caption")


def resolve_inside(root: Path, relative: str, field: str, line_number: int) -> Path:
    """`root / relative`, refusing absolute paths and paths that leave `root` (`..`, symlinks out)."""
    if not isinstance(relative, str) or not relative:
        raise ValueError(f"{METADATA_FILE} line {line_number}: `{field}` must be a non-empty relative path string.")
    if Path(relative).is_absolute():
        raise ValueError(
            f"{METADATA_FILE} line {line_number}: `{field}` {relative!r} is absolute; give it relative to the folder."
        )
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(
            f"{METADATA_FILE} line {line_number}: `{field}` {relative!r} leaves the dataset folder; keep every file "
            "inside it."
        )
    return path


def validate_record(record: dict, root: Path, line_number: int) -> dict:
    """Checks one metadata line; returns it with absolute `video_path` and `masks_path` (or None) added."""
    if not isinstance(record, dict):
        raise ValueError(f"{METADATA_FILE} line {line_number}: expected a JSON object, got {type(record).__name__}.")
    for field in ("file_name", "caption"):
        if field not in record:
            raise ValueError(f"{METADATA_FILE} line {line_number}: missing required field `{field}`.")
    for field in TEXT_FIELDS:
        if record.get(field) is not None and not isinstance(record[field], str):
            raise ValueError(f"{METADATA_FILE} line {line_number}: `{field}` must be a string.")
    if record.get("attributes") is not None and not isinstance(record["attributes"], dict):
        raise ValueError(f"{METADATA_FILE} line {line_number}: `attributes` must be a JSON object.")

    video_path = resolve_inside(root, record["file_name"], "file_name", line_number)
    if video_path.is_dir():
        raise ValueError(
            f"{METADATA_FILE} line {line_number}: clip {record['file_name']!r} is a directory, not a video file."
        )
    if not video_path.is_file():
        raise ValueError(f"{METADATA_FILE} line {line_number}: clip {record['file_name']!r} does not exist.")
    masks_path = None
    if record.get("masks") is not None:
        masks_path = resolve_inside(root, record["masks"], "masks", line_number)
        if not masks_path.is_file():
            raise ValueError(f"{METADATA_FILE} line {line_number}: masks file {record['masks']!r} does not exist.")
    return {**record, "video_path": str(video_path), "masks_path": str(masks_path) if masks_path else None}


def load_clip_metadata(dataset_dir) -> list[dict]:
    """Reads and validates `dataset_dir/metadata.jsonl`.

    Returns:
        One dict per clip: the metadata fields, plus `video_path` and `masks_path` (absolute, or None).

    Raises:
        ValueError: naming the line and the field, for a missing folder/metadata file, text that is not UTF-8,
            invalid JSON, a missing `file_name`/`caption`, a path that leaves the folder, a missing file, or a
            duplicated `file_name`.
    """
    root = Path(dataset_dir)
    metadata_path = root / METADATA_FILE
    if not metadata_path.is_file():
        raise ValueError(
            f"{str(root)!r} has no {METADATA_FILE}; a clip dataset is a folder of mp4 clips with one JSON line per "
            'clip, e.g. {"file_name": "clip_00000.mp4", "caption": "a person talks"}.'
        )
    records, seen = [], set()
    # split on b"\n" only (JSON Lines): `str.splitlines` would also split inside strings holding U+2028 and co.
    for line_number, raw_line in enumerate(metadata_path.read_bytes().split(b"\n"), start=1):
        try:
            line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")  # a leading BOM is allowed
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{str(metadata_path)!r} line {line_number} is not UTF-8 text (byte {raw_line[error.start]:#04x} at "
                f"column {error.start + 1}); save {METADATA_FILE} as UTF-8."
            ) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{METADATA_FILE} line {line_number} is not valid JSON ({error.msg}).") from None
        record = validate_record(record, root, line_number)
        if record["file_name"] in seen:
            raise ValueError(f"{METADATA_FILE} line {line_number}: `file_name` {record['file_name']!r} is listed twice.")
        seen.add(record["file_name"])
        records.append(record)
    if not records:
        raise ValueError(f"{str(metadata_path)!r} lists no clips.")
    return records


def load_clip_dataset(dataset_dir):
    """The validated clip folder as a `datasets.Dataset` with string columns `file_name`, `video_path`,
    `masks_path`, `caption`, `prompt`, `enhanced_caption` (missing ones are None) and `attributes` as JSON text."""
    import datasets

    rows = []
    for record in load_clip_metadata(dataset_dir):
        rows.append(
            {
                "file_name": record["file_name"],
                "video_path": record["video_path"],
                "masks_path": record["masks_path"],
                **{field: record.get(field) for field in TEXT_FIELDS},
                "attributes": json.dumps(record.get("attributes") or {}),
            }
        )
    features = datasets.Features(
        {name: datasets.Value("string") for name in ("file_name", "video_path", "masks_path", *TEXT_FIELDS, "attributes")}
    )
    return datasets.Dataset.from_list(rows, features=features)
