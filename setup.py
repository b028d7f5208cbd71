import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# The default model of `syncdreamer generate`: the repository keeps one copy, in `pipelines/`; a built wheel ships a
# copy of whatever is there at build time as package data (`syncdreamer_hf/pipelines/syncdreamer-tiny`).
BUNDLED_MODEL = Path("pipelines") / "syncdreamer-tiny"

# torch is deliberately unpinned beyond a floor: on CPU machines install `torch==2.13.0` first (see README).
# torchaudio / torchvision are never required: audio and video go through PyAV.
install_requires = [
    "torch>=2.4",
    "diffusers>=0.42.1,<0.44",
    "transformers>=5.24,<6",
    "accelerate>=1.15",
    "safetensors>=0.8",
    "huggingface_hub>=2.4",
    "av>=18",
    "numpy",
    "pillow",
    "tqdm",
    "jinja2",
]
extras = {
    # matplotlib: the drift plot of training_scripts/plot_drift.py
    "train": ["peft>=0.21.2", "datasets>=5.2", "tensorboard", "matplotlib"],
    "enhancer": ["peft>=0.21.2", "trl>=1.16,<2", "datasets>=5.2"],
    "demo": ["gradio>=6"],
    "gpu-audio": ["torchaudio"],
}
# the demo's browser test drives Debian's chromium (apt-get) with playwright's Python package
extras["test"] = sorted(
    set(extras["train"] + extras["enhancer"] + extras["demo"])
    | {"pytest>=8", "pytest-timeout", "ruff>=0.17", "playwright"}
)


class BuildPyWithBundledModel(build_py):
    """Copies `pipelines/syncdreamer-tiny` into the built package. An editable install skips it: the package
    then finds the model in the checkout."""

    def run(self):
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib) / "syncdreamer_hf" / BUNDLED_MODEL
            shutil.rmtree(target, ignore_errors=True)  # a stale copy from an earlier build
            shutil.copytree(BUNDLED_MODEL, target)


setup(
    name="syncdreamer_hf",
    version="0.1.0",
    description="SyncDreamer (CVPR 2026): audio + image + text driven avatar video, diffusers-native",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"syncdreamer_hf": ["model_card_templates/*.md"]},
    cmdclass={"build_py": BuildPyWithBundledModel},
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require=extras,
    entry_points={"console_scripts": ["syncdreamer=syncdreamer_hf.cli:main"]},
    license="Apache-2.0",
)
