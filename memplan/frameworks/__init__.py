"""Runs read from the RL frameworks' own launch files, as request fields (``verl``: its Hydra overrides;
``trl``: a recipe and its accelerate config; ``openrlhf``: a train_ppo_ray command; ``common``: what the
readers share)."""
