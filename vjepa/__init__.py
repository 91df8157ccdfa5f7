"""V-JEPA: video ViT encoder, predictor, pretraining and frozen-encoder evaluation; I-JEPA on images."""
from vjepa.official import load_encoder  # noqa: F401  (vjepa.load_encoder: any supported checkpoint)
