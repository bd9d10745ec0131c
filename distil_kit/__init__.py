"""distil-kit: FlagPerf's DistilBERT / SST-2 fine-tuning benchmark, reproducible and fast, from notebooks."""

from .callbacks import Callback
from .config import RunConfig, load_config
from .engine import finetune
from .errors import KitError
from .records import Run

__version__ = "0.1.0"
__all__ = ["Callback", "KitError", "Run", "RunConfig", "finetune", "load_config", "__version__"]
