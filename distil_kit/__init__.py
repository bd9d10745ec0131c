"""distil-kit: FlagPerf's DistilBERT / SST-2 fine-tuning benchmark, reproducible and fast, from notebooks."""
from .errors import KitError

__version__ = "0.1.0"
__all__ = ["KitError", "__version__"]
