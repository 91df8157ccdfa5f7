"""V-JEPA: video ViT encoder, predictor, pretraining and frozen-encoder evaluation."""
