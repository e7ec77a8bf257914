"""fedlora: federated LoRA fine-tuning with subspace-aware aggregation."""
from fedlora.config import RunConfig, load_config
from fedlora.state import AdapterState, LoraFactors

__all__ = ["AdapterState", "LoraFactors", "RunConfig", "load_config"]
__version__ = "0.1.0"
