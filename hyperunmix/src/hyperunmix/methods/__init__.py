"""Registry: CLI method name -> estimator class and the parameters the name fixes (imported
lazily, so a missing extra only breaks the method that needs it)."""
from __future__ import annotations

from importlib import import_module

from hyperunmix.methods.base import Unmixer

# name -> (module, class, parameters the name fixes)
METHODS: dict[str, tuple[str, str, dict]] = {
    "gauss": ("hyperunmix.methods.gauss", "GAUSS", {"variant": "stage1"}),
    "gauss-blind": ("hyperunmix.methods.gauss", "GAUSS", {"variant": "blind"}),
    "gauss-prime": ("hyperunmix.methods.gauss", "GAUSS", {"variant": "prime"}),
    "vca-fcls": ("hyperunmix.methods.vca", "VCAFCLS", {}),
    "nfindr-fcls": ("hyperunmix.methods.nfindr", "NFINDRFCLS", {}),
    "kmeans-fcls": ("hyperunmix.methods.kmeans", "KMeansFCLS", {}),
    "nmf": ("hyperunmix.methods.nmf", "NMFUnmixer", {}),
    "cnnaeu": ("hyperunmix.methods.cnnaeu", "CNNAEU", {}),
    "autoencoder": ("hyperunmix.methods.autoencoder", "Autoencoder", {}),
    "misicnet": ("hyperunmix.methods.misicnet", "MiSiCNet", {}),
    "edaa": ("hyperunmix.methods.edaa", "EDAA", {}),
    "oracle-fcls": ("hyperunmix.methods.oracle", "OracleFCLS", {}),
}


def method_class(name: str) -> type[Unmixer]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module, cls, _ = METHODS[name]
    return getattr(import_module(module), cls)


def make_method(name: str, n_endmembers: int, random_state: int | None = None, **params) -> Unmixer:
    """Build any method by its CLI name, e.g. make_method("gauss-prime", n_endmembers=3)."""
    cls = method_class(name)
    fixed = METHODS[name][2]
    for key, value in fixed.items():
        if key in params and params[key] != value:
            raise ValueError(f"method {name!r} means {key}={value!r}; got {key}={params[key]!r} "
                             "(choose the method name that means the other value)")
    return cls(n_endmembers=n_endmembers, random_state=random_state, **{**params, **fixed})


__all__ = ["METHODS", "Unmixer", "make_method", "method_class"]
