"""Model cards for saved pipelines, rendered from `model_cards/pipeline.md` with huggingface_hub's `ModelCard`."""

from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "pipeline.md"


def count_parameters(component) -> str:
    """The parameter count of a model as "1.58 M" ("-" for a tokenizer, processor or scheduler)."""
    if not isinstance(component, torch.nn.Module):
        return "-"
    total = sum(parameter.numel() for parameter in component.parameters())
    return f"{total / 1e9:.2f} B" if total >= 1e8 else f"{total / 1e6:.2f} M" if total >= 1e4 else f"{total:,}"


def render_model_card(pipe, title: str, summary: str, repo_id: str = "PATH_OR_REPO", weights_note: str = ""):
    """A `ModelCard` for `pipe` (a SyncDreamerPipeline): use, components with parameter counts, settings."""
    rows = [
        {
            "name": name,
            "library": type(component).__module__.split(".")[0],
            "class_name": type(component).__name__,
            "parameters": count_parameters(component),
        }
        for name, component in sorted(pipe.components.items())
    ]
    card_data = ModelCardData(
        library_name="diffusers", license="apache-2.0", pipeline_tag="image-to-video",
        tags=["syncdreamer", "talking-avatar", "audio-to-video", "wan2.1"],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=title,
        summary=summary,
        repo_id=repo_id,
        components=rows,
        weights_note=weights_note,
        **{key: pipe.config[key] for key in ("num_frames_per_window", "num_motion_frames", "default_height", "default_width")},
    )


def write_model_card(directory, pipe, title: str, summary: str, repo_id: str = "PATH_OR_REPO", weights_note: str = ""):
    """Renders the card and saves it as `directory/README.md`."""
    render_model_card(pipe, title, summary, repo_id, weights_note).save(Path(directory) / "README.md")
