"""The face/body regions a clip's masks can mark, in this order everywhere: the clip dataset's mask files, the latent
cache, the region-weighted and localization losses, and (with "global") the visual adapter's query groups."""

REGION_NAMES = ("eyes", "mouth", "hair", "jaw", "hands")
