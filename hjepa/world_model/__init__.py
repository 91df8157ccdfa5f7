"""The action-conditioned JEPA world model (levels 0 and 1), its training job, the CEM / MPPI and
hierarchical planners, and their evaluation by distance bin."""
