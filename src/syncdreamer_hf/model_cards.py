"""Model cards, rendered with huggingface_hub's `ModelCard` from the templates in `model_card_templates/` (shipped
with the package): one for a pipeline and one for each SyncDreamer model.

`ModelCardMixin` makes `save_pretrained` write the card as `README.md` beside the weights, and makes `push_to_hub`
(and `save_pretrained(..., push_to_hub=True)`) upload it instead of diffusers' generic card.
"""

from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

TEMPLATES = Path(__file__).resolve().parent / "model_card_templates"
PLACEHOLDER_REPO_ID = "PATH_OR_REPO"
LICENSE = "apache-2.0"
TAGS = ["syncdreamer", "talking-avatar", "audio-to-video", "wan2.1"]
PIPELINE_TITLE = "SyncDreamer"
PIPELINE_SUMMARY = "A SyncDreamer pipeline, saved with `SyncDreamerPipeline.save_pretrained`."


def count_parameters(component) -> str:
    """The parameter count of a model as "1.58 M" ("-" for a tokenizer, processor or scheduler)."""
    if not isinstance(component, torch.nn.Module):
        return "-"
    total = sum(parameter.numel() for parameter in component.parameters())
    return f"{total / 1e9:.2f} B" if total >= 1e8 else f"{total / 1e6:.2f} M" if total >= 1e4 else f"{total:,}"


def render_model_card(
    pipe,
    title: str = PIPELINE_TITLE,
    summary: str = PIPELINE_SUMMARY,
    repo_id: str = PLACEHOLDER_REPO_ID,
    weights_note: str = "",
) -> ModelCard:
    """A `ModelCard` for `pipe` (a SyncDreamerPipeline): use, components with parameter counts, inputs and outputs,
    training, licence."""
    rows = [
        {
            "name": name,
            "library": type(component).__module__.split(".")[0],
            "class_name": type(component).__name__,
            "parameters": count_parameters(component),
        }
        for name, component in sorted(pipe.components.items())
        if component is not None
    ]
    card_data = ModelCardData(library_name="diffusers", license=LICENSE, pipeline_tag="image-to-video", tags=TAGS)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "pipeline.md"),
        title=title,
        summary=summary,
        repo_id=repo_id,
        components=rows,
        weights_note=weights_note,
        **{
            key: pipe.config[key]
            for key in ("num_frames_per_window", "num_motion_frames", "default_height", "default_width")
        },
    )


def write_model_card(
    directory,
    pipe,
    title: str = PIPELINE_TITLE,
    summary: str = PIPELINE_SUMMARY,
    repo_id: str = PLACEHOLDER_REPO_ID,
    weights_note: str = "",
):
    """Renders the pipeline card and saves it as `directory/README.md` (replacing the default one that
    `save_pretrained` wrote)."""
    render_model_card(pipe, title, summary, repo_id, weights_note).save(Path(directory) / "README.md")


def render_component_card(
    component, template: str, repo_id: str = PLACEHOLDER_REPO_ID, library_name: str = "diffusers", **variables
) -> ModelCard:
    """The card of one model from `model_card_templates/<template>`; the template sees its `config`, its
    `parameters` count, `repo_id` and `variables`."""
    card_data = ModelCardData(library_name=library_name, license=LICENSE, tags=TAGS)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / template),
        repo_id=repo_id,
        config=dict(component.config),
        parameters=count_parameters(component),
        **variables,
    )


class ModelCardMixin:
    """Put before `ModelMixin` / `DiffusionPipeline` in the bases; set `_model_card_template` (a file name in
    `model_card_templates/`) or override `model_card`."""

    _model_card_template: str

    def model_card(self, repo_id: str = PLACEHOLDER_REPO_ID) -> ModelCard:
        return render_component_card(self, self._model_card_template, repo_id)

    def save_model_cards(self, directory, repo_id: str = PLACEHOLDER_REPO_ID) -> None:
        """Writes `directory/README.md`."""
        self.model_card(repo_id).save(Path(directory) / "README.md")

    def save_pretrained(self, save_directory, *args, **kwargs):
        # a str: diffusers' push_to_hub branch splits the path as a string
        super().save_pretrained(str(save_directory), *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.save_model_cards(save_directory)

    def _upload_folder(self, working_dir, repo_id: str, *args, **kwargs):
        # diffusers' push_to_hub and save_pretrained(push_to_hub=True) write a generic card just before uploading
        self.save_model_cards(working_dir, repo_id)
        return super()._upload_folder(working_dir, repo_id, *args, **kwargs)
