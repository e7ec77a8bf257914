"""One method on one scene with one seed: estimates, scores, resolved config, maps and figures.

A run folder holds estimates.mat, abundances.tif, endmembers.csv, metrics.json, figures and,
written last, config.yaml: a folder
with metrics.json and config.yaml holds a finished run. Writing into a folder that holds a run
needs `overwrite=True` (`--overwrite`), and the folder is locked while a run writes to it.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.io
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hyperunmix import __version__, make_method
from hyperunmix.bands import describe as describe_bands
from hyperunmix.files import atomic_write
from hyperunmix.locks import folder_lock
from hyperunmix.metrics import reconstruction_rmse, score
from hyperunmix.outputs import endmember_labels, write_abundance_geotiff, write_endmembers_csv
from hyperunmix.scene import Scene
from hyperunmix.window import parse_window

log = logging.getLogger("hyperunmix")

FINISHED_MARKERS = ("metrics.json", "config.yaml")
FIGURE_FILES = ("abundances.png", "endmembers.png", "training_curves.png")
DEFAULT_DATASET = "samson"


class ConfigDumper(yaml.SafeDumper):
    """YAML with lists of plain values on one line (wavelengths would otherwise take a line each)."""


ConfigDumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=all(not isinstance(v, (list, dict)) for v in data)))


class RunConfig(BaseModel):
    """A run as written to config.yaml (and accepted by `hyperunmix run --config`)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str | None = None  # a registered scene name; samson when neither it nor input is given
    input: str | None = None  # or any scene file the loader reads
    window: str | None = None  # fit on 'row0:row1,col0:col1' only, then unmix the whole scene
    method: str = "vca-fcls"
    seed: int = 0
    endmembers: int | Literal["auto"] | None = None  # None: the scene's own p (its ground truth)
    params: dict[str, Any] = Field(default_factory=dict)
    dataset_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def one_source(self) -> "RunConfig":
        if self.dataset is not None and self.input is not None:
            raise ValueError(f"give a dataset name or an input file, not both (got dataset={self.dataset!r} "
                             f"and input={self.input!r})")
        if self.dataset is None and self.input is None:
            self.dataset = DEFAULT_DATASET
        return self


def method_params(scene: Scene, method_name: str, params: dict | None) -> dict:
    """User params plus what a method needs from the scene (the oracle's true endmembers)."""
    params = dict(params or {})
    for fixed, source in (("n_endmembers", "the dataset's p"), ("random_state", "the seed")):
        if fixed in params:
            raise ValueError(f"{fixed} cannot be set as a method parameter: it comes from {source}")
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
                 params: dict | None = None, window: str | None = None) -> dict | None:
    """The metrics of a run already written to `out_dir` for the same scene, method, seed and
    resolved parameters; None when there is none (or it was made with other settings)."""
    out_dir = Path(out_dir)
    if not all((out_dir / name).is_file() for name in FINISHED_MARKERS):
        return None
    try:
        metrics, stored = load_run(out_dir)
    except ValueError:  # damaged by hand: fit again
        return None
    model = build_method(scene, method_name, seed, params)
    wanted = {"dataset": scene.name, "method": method_name, "seed": seed, "params": plain(model.get_params()),
              "window": window}
    if any(stored.get(key) != value for key, value in wanted.items()):
        return None
    if (stored.get("scene") or {}).get("fingerprint") != scene.fingerprint():  # the scene file changed
        return None
    return metrics


def resolved_config(scene: Scene, method_name: str, seed: int, model, dataset_options: dict | None,
                    input_path: str | None = None, endmembers: dict | None = None) -> dict:
    wavelengths = None if scene.wavelengths is None else [round(float(w), 4) for w in scene.wavelengths]
    kept = scene.meta.get("bands_kept")
    bands_kept = "all" if kept is None else describe_bands(kept)
    return {
        "dataset": scene.name,
        **({"input": str(input_path)} if input_path is not None else {}),
        "method": method_name,
        "seed": seed,
        "endmembers": endmembers or {"given": None, "used": model.n_endmembers},
        "params": plain(model.get_params()),
        "dataset_options": plain(dataset_options or {}),
        "scene": {"H": scene.H, "W": scene.W, "bands": scene.n_bands, "p": scene.p,
                  "path": scene.meta.get("path", "generated"), "scale": plain(scene.meta.get("scale")),
                  "bands_kept": bands_kept, "wavelengths_nm": wavelengths,
                  "georeferenced": scene.georeference is not None, "fingerprint": scene.fingerprint()},
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


def choose_endmembers(scene: Scene, requested: int | str | None) -> dict:
    """How many endmembers to fit: {'given': what was asked, 'used': p} (+ the HySime estimate
    for 'auto'). None means the scene's own p; a p that contradicts its ground truth is refused,
    as the scores need the same number of estimated and true endmembers."""
    if requested == "auto":
        from hyperunmix.estimate import hysime

        estimate = hysime(scene.Y).n_endmembers
        used = max(2, estimate)  # unmixing needs two materials at least
        log.info("HySime estimates %d endmember(s) in %s; fitting %d", estimate, scene.name, used)
        if scene.p is not None and used != scene.p:
            log.info("%s has ground truth for p=%d materials: scored by reconstruction RMSE only", scene.name,
                     scene.p)
        return {"given": "auto", "used": used, "hysime": estimate}
    own = scene.p or scene.meta.get("n_endmembers")
    if requested is None:
        if own is None:
            raise ValueError(f"scene {scene.name!r} has no ground truth: give the number of endmembers "
                             "(--endmembers N, or --endmembers auto to estimate it with HySime)")
        return {"given": None, "used": own}
    if scene.p is not None and requested != scene.p:
        raise ValueError(f"--endmembers {requested} contradicts the ground truth of {scene.name!r}, which has "
                         f"p={scene.p} materials (scores need the same number)")
    return {"given": requested, "used": requested}


def build_method(scene: Scene, method_name: str, seed: int, params: dict | None = None,
                 n_endmembers: int | None = None):
    """The unfitted estimator `run_method` fits on `scene` (with the scene's p unless given)."""
    p = n_endmembers or choose_endmembers(scene, None)["used"]
    return make_method(method_name, n_endmembers=p, random_state=seed, **method_params(scene, method_name, params))


def run_method(
    scene: Scene,
    method_name: str,
    seed: int = 0,
    params: dict | None = None,
    out_dir: str | Path | None = None,
    figures: bool = True,
    dataset_options: dict | None = None,
    overwrite: bool = False,
    n_endmembers: int | str | None = None,
    input_path: str | Path | None = None,
    window: str | None = None,
) -> dict:
    """Fit `method_name` on `scene`, score it against the ground truth when there is one (else the
    reconstruction RMSE), and (with `out_dir`) write estimates.mat, abundances.tif,
    endmembers.csv, metrics.json, config.yaml and figures. Returns the metrics.

    `n_endmembers`: None (the scene's p), a number, or "auto" (HySime's estimate, recorded in
    the metrics and config). `input_path`: the file the scene came from, recorded so the run can
    be redrawn. `window` ('row0:row1,col0:col1'): fit on that part of the scene only, then
    unmix the whole scene with the fitted model (`transform`). `out_dir` is checked and locked
    before the fit, so a bad folder costs no fitting time; a folder that already holds a run is
    refused unless `overwrite`."""
    endmembers = choose_endmembers(scene, n_endmembers)
    model = build_method(scene, method_name, seed, params, endmembers["used"])
    model.validate_params()  # before the folder is made: a bad parameter leaves nothing behind
    part = None if window is None else parse_window(window, scene.H, scene.W)
    if out_dir is None:
        return fit_and_score(scene, method_name, seed, model, endmembers, part)[0]
    with folder_lock(out_dir) as out:
        if not overwrite:
            check_no_run(out)
        metrics, abundances = fit_and_score(scene, method_name, seed, model, endmembers, part)
        config = resolved_config(scene, method_name, seed, model, dataset_options, input_path, endmembers)
        config["window"] = window
        write_run(out, scene, model, abundances, metrics, config, figures)
    return metrics


def check_no_run(out: Path) -> None:
    held = [name for name in FINISHED_MARKERS if (out / name).exists()]
    if held:
        raise FileExistsError(f"{out} already holds a run ({', '.join(held)}); pass --overwrite "
                              "(overwrite=True) to replace it, or choose another output folder")


def fit_scene(scene: Scene, model, window: tuple[slice, slice] | None = None) -> np.ndarray:
    """Fit `model` on the scene (or on its `window` only); the abundances (p, H, W) of the whole scene."""
    if window is None:
        return model.fit(scene.cube).abundances_
    model.fit(scene.cube[window])
    return model.transform(scene.cube)


def fit_and_score(scene: Scene, method_name: str, seed: int, model, endmembers: dict | None = None,
                  window: tuple[slice, slice] | None = None) -> tuple[dict, np.ndarray]:
    """(metrics, abundances (p, H, W) of the whole scene)."""
    p = model.n_endmembers
    start = time.perf_counter()
    abundances = fit_scene(scene, model, window)
    wall = time.perf_counter() - start
    E_hat, A_hat = model.endmembers_, abundances.reshape(p, -1)
    metrics: dict[str, Any] = {"dataset": scene.name, "method": method_name, "seed": seed,
                               "fit_time_s": float(model.fit_time_), "wall_time_s": wall, "n_endmembers": p}
    if endmembers and "hysime" in endmembers:
        metrics["hysime_estimate"] = endmembers["hysime"]
    if scene.has_ground_truth and p == scene.p:
        metrics.update(score(E_hat, A_hat, scene.E, scene.A, Y=scene.Y))
    else:
        metrics["reconstruction_rmse"] = reconstruction_rmse(scene.Y, E_hat, A_hat)
    return metrics, abundances


def write_run(out: Path, scene: Scene, model, abundances: np.ndarray, metrics: dict, config: dict,
              figures: bool) -> None:
    # config.yaml goes first and comes back last: a run killed while writing never looks finished.
    (out / "config.yaml").unlink(missing_ok=True)
    for name in FIGURE_FILES:  # figures of a replaced run would describe the wrong fit
        (out / name).unlink(missing_ok=True)
    p = model.endmembers_.shape[1]
    # HySUPP-compatible: E (L, p), A (p, N) with row-major pixels, plus the image size.
    estimates = {"E": model.endmembers_, "A": abundances.reshape(p, -1), "H": scene.H, "W": scene.W, "p": p}
    atomic_write(out / "estimates.mat", lambda handle: scipy.io.savemat(handle, estimates))
    labels = endmember_labels(p, scene.material_names, metrics.get("matching"))
    write_abundance_geotiff(out / "abundances.tif", abundances, labels, scene.georeference)
    write_endmembers_csv(out / "endmembers.csv", model.endmembers_, labels, scene.wavelengths)
    atomic_write(out / "metrics.json", lambda handle: json.dump(plain(metrics), handle, indent=2), mode="w")
    if figures:
        write_run_figures(out, scene, model.endmembers_, abundances, metrics, getattr(model, "history_", {}))
    atomic_write(out / "config.yaml", lambda handle: yaml.dump(config, handle, ConfigDumper, sort_keys=False),
                 mode="w")


def write_run_figures(out: Path, scene: Scene, E_hat: np.ndarray, A_hat: np.ndarray, metrics: dict,
                      history: dict | None = None) -> None:
    """abundances.png and endmembers.png (estimates E (L, p), A (p, H, W)); training_curves.png
    when the fit's `history` is given."""
    from hyperunmix import figures

    title = f"{metrics['method']} on {scene.name} (seed {metrics['seed']})"
    # The truth is drawn beside the estimates only when the run was scored against it: with
    # another number of endmembers (an estimated count, say) there is nothing to pair it with.
    scored = "matching" in metrics
    if scored:
        perm = metrics["matching"]  # show estimates in the true order
        E_hat, A_hat = E_hat[:, perm], A_hat[perm]
        sad_text = f": mean SAD {metrics['mean_sad_deg']:.2f} deg, aRMSE {metrics['armse']:.3f}"
    else:
        sad_text = ""
    A_true, E_true, names = (scene.abundance_maps, scene.E, scene.material_names) if scored else (None, None, None)
    figures.abundance_grid(A_hat, out / "abundances.png", A_true, names, title + sad_text)
    if E_true is not None and metrics["method"] != "oracle-fcls" and scene.meta.get("gt_max_scaled"):
        E_true = scene.rescaled_endmembers()  # comparable level with the estimates
    figures.endmember_plot(E_hat, out / "endmembers.png", E_true, names, scene.wavelengths,
                           metrics.get("sad_deg"), title)
    if history is not None:
        figures.training_curves(history, out / "training_curves.png", title)


def redraw_figures(run_dir: str | Path) -> None:
    """abundances.png and endmembers.png of a finished run, from its estimates.mat (no refit). The
    training curves need the fit's history, which a run folder does not keep."""
    from hyperunmix.datasets import open_scene

    run_dir = Path(run_dir)
    metrics, config = load_run(run_dir)
    if not (run_dir / "estimates.mat").is_file():
        raise FileNotFoundError(f"{run_dir} has no estimates.mat to draw from")
    options = config.get("dataset_options") or {}
    if config.get("input"):
        scene = open_scene(input=config["input"], name=config["dataset"], **options)
    else:
        scene = open_scene(config["dataset"], **options)
    saved = scipy.io.loadmat(run_dir / "estimates.mat")
    E_hat, A_hat = saved["E"], saved["A"].reshape(-1, scene.H, scene.W)
    write_run_figures(run_dir, scene, E_hat, A_hat, metrics)


def load_run(run_dir: str | Path) -> tuple[dict, dict]:
    """(metrics, config) of a run directory written by `run_method`; a file that cannot be read
    back (damaged or cut short) raises a ValueError naming it."""
    run_dir = Path(run_dir)
    for name in FINISHED_MARKERS:
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory: {name} is missing")
    loaded = []
    for name, parse in (("metrics.json", json.loads), ("config.yaml", yaml.safe_load)):
        try:
            value = parse((run_dir / name).read_text())
        except (ValueError, yaml.YAMLError) as err:
            problem = " ".join(str(err).split())
            raise ValueError(f"{run_dir / name} cannot be read ({problem}); rerun the run to rewrite it") from None
        if not isinstance(value, dict):
            raise ValueError(f"{run_dir / name} should hold a mapping, got {type(value).__name__}")
        loaded.append(value)
    return loaded[0], loaded[1]
