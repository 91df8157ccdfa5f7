"""Generated data (no download): motion videos, the motion benchmark, two-time-scale long videos, the
point-mass worlds and their trajectories."""
