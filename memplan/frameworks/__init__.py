"""Runs read from the RL frameworks' own launch files, as request fields (``verl``: its Hydra overrides)."""
