from setuptools import find_packages, setup

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
]
extras = {
    "train": ["peft>=0.21.2", "datasets>=5.2", "tensorboard"],
    "enhancer": ["peft>=0.21.2", "trl>=1.16,<2", "datasets>=5.2"],
    "demo": ["gradio"],
    "gpu-audio": ["torchaudio"],
}
extras["test"] = sorted(set(extras["train"] + extras["enhancer"] + ["pytest>=8", "pytest-timeout"]))

setup(
    name="syncdreamer_hf",
    version="0.1.0",
    description="SyncDreamer (CVPR 2026): audio + image + text driven avatar video, diffusers-native",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require=extras,
    entry_points={"console_scripts": ["syncdreamer=syncdreamer_hf.cli:main"]},
    license="Apache-2.0",
)
