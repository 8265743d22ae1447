"""memplan's REST service (FastAPI, the ``[api]`` extra): ``api.main:app``, served by ``memplan serve``."""
