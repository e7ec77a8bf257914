"""Registry: CLI method name -> estimator class (imported lazily, so a missing extra only
breaks the method that needs it)."""
from __future__ import annotations

from importlib import import_module

from hyperunmix.methods.base import Unmixer

# name -> (module, class)
METHODS: dict[str, tuple[str, str]] = {
    "gauss": ("hyperunmix.methods.gauss", "GAUSS"),
    "gauss-blind": ("hyperunmix.methods.gauss", "GAUSSBlind"),
    "gauss-prime": ("hyperunmix.methods.gauss", "GAUSSPrime"),
    "vca-fcls": ("hyperunmix.methods.vca", "VCAFCLS"),
    "nfindr-fcls": ("hyperunmix.methods.nfindr", "NFINDRFCLS"),
    "kmeans-fcls": ("hyperunmix.methods.kmeans", "KMeansFCLS"),
    "nmf": ("hyperunmix.methods.nmf", "NMFUnmixer"),
    "cnnaeu": ("hyperunmix.methods.cnnaeu", "CNNAEU"),
    "autoencoder": ("hyperunmix.methods.autoencoder", "Autoencoder"),
    "oracle-fcls": ("hyperunmix.methods.oracle", "OracleFCLS"),
}


def method_class(name: str) -> type[Unmixer]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module, cls = METHODS[name]
    return getattr(import_module(module), cls)


def make_method(name: str, n_endmembers: int, random_state: int | None = None, **params) -> Unmixer:
    """Build any method by its CLI name, e.g. make_method("gauss-prime", n_endmembers=3)."""
    return method_class(name)(n_endmembers=n_endmembers, random_state=random_state, **params)


__all__ = ["METHODS", "Unmixer", "make_method", "method_class"]
