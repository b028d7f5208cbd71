"""Model cards: every SyncDreamer model's `save_pretrained` writes its card (usage, shapes, licence, training
command), the pipeline's writes its own and its models', and `push_to_hub` uploads them (to a local stand-in for
the Hub: nothing goes over the network)."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import EntryNotFoundError

from syncdreamer_hf import SyncDreamerFrameAutoencoder, SyncDreamerPipeline
from syncdreamer_hf.model_cards import TEMPLATES
from syncdreamer_hf.tiny import TINY_PIPELINE_CONFIG, build_tiny_components

MODEL_COMPONENTS = ["transformer", "visual_adapter", "audio_dynamics_encoder"]


@pytest.fixture(scope="module")
def components():
    return build_tiny_components(seed=0)


def load_card(directory: Path) -> ModelCard:
    return ModelCard.load(directory / "README.md")


@pytest.mark.parametrize(
    "name,shape_lines",
    [
        (
            "transformer",
            ["`(B, 36, T, h, w)`", "`(B, L, 32)`", "`(B, K, 16)`", "`(B, T, N_tok, 16)`", "`(B, 16, T, h, w)`"],
        ),
        ("visual_adapter", ["`(B, N_img, 32)`", "`(B, 8, 16)`"]),
        ("audio_dynamics_encoder", ["`(B, 3, N_a, 32)`", "`(B, (F - 1) / 4 + 1, 4, 16)`", "`(B, F)`"]),
    ],
)
def test_save_pretrained_writes_the_card_with_shapes_from_the_config(components, tmp_path, name, shape_lines):
    model = components[name]
    model.save_pretrained(tmp_path)
    card = load_card(tmp_path)
    assert card.data.license == "apache-2.0" and card.data.library_name == "diffusers"
    assert f"# {type(model).__name__}" in card.text
    assert f'{type(model).__name__}.from_pretrained("PATH_OR_REPO", subfolder="{name}")' in card.text
    assert all(shape in card.text for shape in shape_lines), card.text
    assert "training_scripts/train_syncdreamer.py --stage 2" in card.text and "## Licence" in card.text
    assert type(model).from_pretrained(tmp_path) is not None  # the card does not disturb loading


def test_frame_autoencoder_card(tmp_path):
    vae = SyncDreamerFrameAutoencoder(z_dim=4, block_out_channels=(8, 16), scale_factor_spatial=2)
    vae.save_pretrained(tmp_path)
    card = load_card(tmp_path)
    assert "`(B, 4, F, H/2, W/2)`" in card.text and "train_tiny_vae.py --architecture frame" in card.text
    assert card.data.license == "apache-2.0"


def test_prompt_enhancer_card(tmp_path):
    from syncdreamer_hf.prompt_enhancer import SyncDreamerPromptEnhancer
    from syncdreamer_hf.prompt_enhancer.tiny import build_tiny_qwen2_vl

    enhancer = SyncDreamerPromptEnhancer.from_pretrained(build_tiny_qwen2_vl(tmp_path / "vlm"))
    enhancer.save_pretrained(tmp_path / "saved")
    card = load_card(tmp_path / "saved")
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert "a `qwen2_vl` vision-language model" in card.text and "train_prompt_enhancer.py" in card.text
    assert f"resized to {enhancer.config.image_size}x{enhancer.config.image_size}" in card.text


def test_every_template_is_package_data_beside_the_module():
    names = {path.name for path in TEMPLATES.glob("*.md")}
    expected = (*MODEL_COMPONENTS, "frame_autoencoder", "prompt_enhancer", "prompt_enhancer_world", "pipeline")
    assert names == {f"{name}.md" for name in expected}
    assert TEMPLATES.parent.name == "syncdreamer_hf"  # inside the package, not the checkout


class LocalHub:
    """A stand-in for the Hub API that diffusers' push_to_hub uses: one folder per repo under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.uploads = []

    def create_repo(self, repo_id, **kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, **kwargs):
        self.uploads.append(repo_id)
        shutil.copytree(folder_path, self.root / repo_id / (path_in_repo or ""), dirs_exist_ok=True)

    def hf_hub_download(self, repo_id, filename, **kwargs):
        path = self.root / repo_id / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import diffusers.models.modeling_utils
    import diffusers.pipelines.pipeline_utils
    import diffusers.utils.hub_utils
    import huggingface_hub.repocard

    hub = LocalHub(tmp_path / "hub")
    for module in (diffusers.utils.hub_utils, diffusers.pipelines.pipeline_utils, diffusers.models.modeling_utils):
        monkeypatch.setattr(module, "create_repo", hub.create_repo)
    monkeypatch.setattr(diffusers.utils.hub_utils, "upload_folder", hub.upload_folder)
    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", hub.hf_hub_download)
    return hub


@pytest.mark.parametrize("how", ["push_to_hub", "save_pretrained"])
def test_pipeline_push_uploads_its_card_and_every_model_card(components, hub, tmp_path, how):
    pipe = SyncDreamerPipeline(**components, **TINY_PIPELINE_CONFIG)
    if how == "push_to_hub":
        pipe.push_to_hub("me/avatar")
    else:
        pipe.save_pretrained(str(tmp_path / "avatar"), push_to_hub=True, repo_id="me/avatar")
    repo = hub.root / "me" / "avatar"
    assert hub.uploads == ["me/avatar"] and (repo / "model_index.json").is_file()
    card = load_card(repo)
    assert card.data.pipeline_tag == "image-to-video" and card.data.license == "apache-2.0"
    assert "# SyncDreamer" in card.text and 'SyncDreamerPipeline.from_pretrained("me/avatar")' in card.text
    assert "diffusers pipeline that has been pushed" not in card.text  # not diffusers' generic card
    for name in MODEL_COMPONENTS:
        component_card = load_card(repo / name)
        assert f'from_pretrained("me/avatar", subfolder="{name}")' in component_card.text
    loaded = SyncDreamerPipeline.from_pretrained(repo)
    for name in MODEL_COMPONENTS:
        for key, value in getattr(pipe, name).state_dict().items():
            torch.testing.assert_close(getattr(loaded, name).state_dict()[key], value, atol=0, rtol=0)


def test_model_push_to_hub_uploads_its_card(components, hub):
    components["visual_adapter"].push_to_hub("me/adapter")
    card = load_card(hub.root / "me" / "adapter")
    assert "# SyncDreamerVisualAdapter" in card.text and 'from_pretrained("me/adapter"' in card.text
