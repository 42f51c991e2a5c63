"""Feed mixing, the serving policy after the ranker: task predictions → one value per candidate
(`value_model`) → the feed's order (`blender`: type mix, diversity, creator caps) → on an exploring
arm, a sampled order with known propensities (`exploration`)."""
