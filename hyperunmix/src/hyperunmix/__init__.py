"""hyperunmix: hyperspectral unmixing with GAUSS and the classic baselines."""
from hyperunmix.methods import METHODS, Unmixer, make_method

__all__ = ["METHODS", "Unmixer", "make_method"]
__version__ = "0.1.0"
