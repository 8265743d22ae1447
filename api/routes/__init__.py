"""One ``APIRouter`` per resource: estimate, compare, plan, catalog (models, GPUs, algorithms), health."""
