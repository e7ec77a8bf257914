"""One method on one scene with one seed: estimates, scores, resolved config and figures."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import yaml
from pydantic import BaseModel, ConfigDict, Field

from hyperunmix import __version__, make_method
from hyperunmix.data import Scene, atomic_write
from hyperunmix.metrics import reconstruction_rmse, score


class RunConfig(BaseModel):
    """A run as written to config.yaml (and accepted by `hyperunmix run --config`)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "samson"
    method: str = "vca-fcls"
    seed: int = 0
    params: dict[str, Any] = Field(default_factory=dict)
    dataset_options: dict[str, Any] = Field(default_factory=dict)


def method_params(scene: Scene, method_name: str, params: dict | None) -> dict:
    """User params plus what a method needs from the scene (the oracle's true endmembers)."""
    params = dict(params or {})
    if method_name == "oracle-fcls":
        if scene.E is None:
            raise ValueError(f"oracle-fcls needs ground-truth endmembers; scene {scene.name!r} has none")
        params.setdefault("endmembers", scene.E)
        if scene.meta.get("gt_max_scaled"):
            # Max-scaled GT (Samson): rescale by least squares against the true abundances.
            params.setdefault("rescale", True)
            params.setdefault("abundances", scene.A)
    return params


def plain(value: Any) -> Any:
    """A YAML/JSON-safe version of a parameter (arrays are summarised, not dumped)."""
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)}"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def finished_run(out_dir: str | Path, scene: Scene, method_name: str, seed: int,
                 params: dict | None = None) -> dict | None:
    """The metrics of a run already written to `out_dir` for the same scene, method, seed and
    resolved parameters; None when there is none (or it was made with other settings)."""
    out_dir = Path(out_dir)
    if not ((out_dir / "metrics.json").is_file() and (out_dir / "config.yaml").is_file()):
        return None
    stored = yaml.safe_load((out_dir / "config.yaml").read_text()) or {}
    model = build_method(scene, method_name, seed, params)
    wanted = {"dataset": scene.name, "method": method_name, "seed": seed, "params": plain(model.get_params())}
    if any(stored.get(key) != value for key, value in wanted.items()):
        return None
    return json.loads((out_dir / "metrics.json").read_text())


def resolved_config(scene: Scene, method_name: str, seed: int, model, dataset_options: dict | None) -> dict:
    return {
        "dataset": scene.name,
        "method": method_name,
        "seed": seed,
        "params": plain(model.get_params()),
        "dataset_options": plain(dataset_options or {}),
        "scene": {"H": scene.H, "W": scene.W, "bands": scene.n_bands, "p": scene.p,
                  "path": scene.meta.get("path", "generated"), "scale": plain(scene.meta.get("scale"))},
        "environment": {"hyperunmix": __version__, "python": platform.python_version(),
                        "numpy": np.__version__, "threads": threads_in_use()},
    }


def threads_in_use() -> dict:
    out = {}
    try:
        import torch

        out["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    from threadpoolctl import threadpool_info

    out["blas"] = max((pool["num_threads"] for pool in threadpool_info()), default=1)
    return out


def build_method(scene: Scene, method_name: str, seed: int, params: dict | None = None):
    """The unfitted estimator `run_method` fits on `scene`."""
    p = scene.p or scene.meta.get("n_endmembers")
    if p is None:
        raise ValueError(f"scene {scene.name!r} has no ground truth: give the number of endmembers")
    return make_method(method_name, n_endmembers=p, random_state=seed, **method_params(scene, method_name, params))


def run_method(
    scene: Scene,
    method_name: str,
    seed: int = 0,
    params: dict | None = None,
    out_dir: str | Path | None = None,
    figures: bool = True,
    dataset_options: dict | None = None,
) -> dict:
    """Fit `method_name` on `scene`, score it against the ground truth when there is one, and
    (with `out_dir`) write estimates.mat, metrics.json, config.yaml and figures. Returns the metrics."""
    model = build_method(scene, method_name, seed, params)
    p = model.n_endmembers
    start = time.perf_counter()
    model.fit(scene.cube)
    wall = time.perf_counter() - start
    E_hat, A_hat = model.endmembers_, model.abundances_.reshape(p, -1)
    metrics: dict[str, Any] = {"dataset": scene.name, "method": method_name, "seed": seed,
                               "fit_time_s": float(model.fit_time_), "wall_time_s": wall}
    if scene.has_ground_truth:
        metrics.update(score(E_hat, A_hat, scene.E, scene.A, Y=scene.Y))
    else:
        metrics["reconstruction_rmse"] = reconstruction_rmse(scene.Y, E_hat, A_hat)
    if out_dir is not None:
        config = resolved_config(scene, method_name, seed, model, dataset_options)
        write_run(Path(out_dir), scene, model, metrics, config, figures)
    return metrics


def write_run(out: Path, scene: Scene, model, metrics: dict, config: dict, figures: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    p = model.endmembers_.shape[1]
    # HySUPP-compatible: E (L, p), A (p, N) with row-major pixels, plus the image size.
    estimates = {"E": model.endmembers_, "A": model.abundances_.reshape(p, -1), "H": scene.H, "W": scene.W, "p": p}
    atomic_write(out / "estimates.mat", lambda handle: scipy.io.savemat(handle, estimates))
    atomic_write(out / "metrics.json", lambda handle: json.dump(plain(metrics), handle, indent=2), mode="w")
    atomic_write(out / "config.yaml", lambda handle: yaml.safe_dump(config, handle, sort_keys=False), mode="w")
    if figures:
        write_run_figures(out, scene, model.endmembers_, model.abundances_, metrics, getattr(model, "history_", {}))


def write_run_figures(out: Path, scene: Scene, E_hat: np.ndarray, A_hat: np.ndarray, metrics: dict,
                      history: dict | None = None) -> None:
    """abundances.png and endmembers.png (estimates E (L, p), A (p, H, W)); training_curves.png
    when the fit's `history` is given."""
    from hyperunmix import figures

    title = f"{metrics['method']} on {scene.name} (seed {metrics['seed']})"
    if "matching" in metrics:
        perm = metrics["matching"]  # show estimates in the true order
        E_hat, A_hat = E_hat[:, perm], A_hat[perm]
        sad_text = f": mean SAD {metrics['mean_sad_deg']:.2f} deg, aRMSE {metrics['armse']:.3f}"
    else:
        sad_text = ""
    figures.abundance_grid(A_hat, out / "abundances.png", scene.abundance_maps, scene.material_names,
                           title + sad_text)
    E_true = scene.E
    if E_true is not None and metrics["method"] != "oracle-fcls" and scene.meta.get("gt_max_scaled"):
        E_true = scene.rescaled_endmembers()  # comparable level with the estimates
    figures.endmember_plot(E_hat, out / "endmembers.png", E_true, scene.material_names, scene.wavelengths,
                           metrics.get("sad_deg"), title)
    if history is not None:
        figures.training_curves(history, out / "training_curves.png", title)


def redraw_figures(run_dir: str | Path) -> None:
    """abundances.png and endmembers.png of a finished run, from its estimates.mat (no refit). The
    training curves need the fit's history, which a run folder does not keep."""
    from hyperunmix.datasets import load_dataset

    run_dir = Path(run_dir)
    metrics, config = load_run(run_dir)
    if not (run_dir / "estimates.mat").is_file():
        raise FileNotFoundError(f"{run_dir} has no estimates.mat to draw from")
    scene = load_dataset(config["dataset"], **(config.get("dataset_options") or {}))
    saved = scipy.io.loadmat(run_dir / "estimates.mat")
    E_hat, A_hat = saved["E"], saved["A"].reshape(-1, scene.H, scene.W)
    write_run_figures(run_dir, scene, E_hat, A_hat, metrics)


def load_run(run_dir: str | Path) -> tuple[dict, dict]:
    """(metrics, config) of a run directory written by `run_method`."""
    run_dir = Path(run_dir)
    for name in ("metrics.json", "config.yaml"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory: {name} is missing")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return metrics, config
