"""H-JEPA: hierarchy levels over V-JEPA features, action-conditioned world models and planners."""
