"""V-JEPA: video ViT encoder, predictor, pretraining and frozen-encoder evaluation; I-JEPA on images."""

__all__ = ["load_encoder"]


def __getattr__(name: str):
    # `vjepa.load_encoder` without importing the models (timm, torch) on every `import vjepa.<module>`.
    if name == "load_encoder":
        from vjepa.official import load_encoder

        return load_encoder
    raise AttributeError(f"module 'vjepa' has no attribute {name!r}")
