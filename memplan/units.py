"""Units of memory. Bytes are ``int`` everywhere; these constants are used only for input parsing and output.

GiB is 1024**3 (what ``torch.cuda`` and ``nvidia-smi`` report); GB is 10**9 (what GPU datasheets print).
"""

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
GB = 10**9


def fmt_gib(n_bytes: int, digits: int = 2) -> str:
    """Format a byte count as GiB, e.g. ``'12.55 GiB'``."""
    return f"{n_bytes / GiB:.{digits}f} GiB"
