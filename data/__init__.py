"""Video data: decoding, datasets, transforms, masks, collation and generated data.

This package knows nothing of models (`vjepa`, `hjepa` build on it, never the reverse).
"""
