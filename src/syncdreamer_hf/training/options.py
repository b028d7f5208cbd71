"""Pieces of the training recipes' command lines that several recipes share."""

import torch


def parse_region_weights(text: str) -> dict[str, float]:
    """'mouth=20,eyes=2' (`--region_weights`) -> {'mouth': 20.0, 'eyes': 2.0}."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--region_weights item {item!r} must look like mouth=20.") from None
    return weights


def optimizer_class(use_8bit_adam: bool):
    """`torch.optim.AdamW`, or bitsandbytes' `AdamW8bit` (`--use_8bit_adam`: optimizer state in 8 bits, 6 bytes
    less per trained parameter)."""
    if not use_8bit_adam:
        return torch.optim.AdamW
    try:
        import bitsandbytes
    except ImportError:
        raise ImportError("--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes`.") from None
    return bitsandbytes.optim.AdamW8bit
