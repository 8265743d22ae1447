"""Runs read from the RL frameworks' own launch files, as request fields (``verl``: its Hydra overrides;
``trl``: a recipe and its accelerate config; ``common``: what the readers share)."""
