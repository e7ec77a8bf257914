"""Named datasets: the real scenes of the shared data directory and the synthetic scenes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hyperunmix.loaders import load_scene
from hyperunmix.scene import Scene
from hyperunmix.validation import SceneError

DATA_ENV = "HYPERUNMIX_DATA_DIR"
SCENE_SUBDIR = "hsi"


def data_dir() -> Path:
    """The shared data directory: $HYPERUNMIX_DATA_DIR, else `../shared/data` from the repository root."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    repo_root = Path(__file__).resolve().parents[3]  # <root>/hyperunmix/src/hyperunmix/datasets.py
    for root in (repo_root, Path.cwd(), Path.cwd().parent):
        candidate = root.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return repo_root.parent / "shared" / "data"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    p: int
    filename: str | None = None
    gt_filename: str | None = None
    material_names: tuple[str, ...] | None = None
    load_options: dict = field(default_factory=dict)
    description: str = ""
    synthetic: dict | None = None
    gt_max_scaled: bool = False  # GT endmembers stored max-scaled: the oracle rescales them

    def path(self) -> Path | None:
        return None if self.filename is None else data_dir() / SCENE_SUBDIR / self.filename

    def gt_path(self) -> Path | None:
        return None if self.gt_filename is None else data_dir() / SCENE_SUBDIR / self.gt_filename

    def available(self) -> bool:
        if self.synthetic is not None:
            return self.synthetic.get("library") != "real" or DATASETS["samson"].available()
        paths = [self.path()] + ([self.gt_path()] if self.gt_filename else [])
        return all(p.exists() for p in paths)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "samson", 3, "samson.mat", material_names=("soil", "tree", "water"), gt_max_scaled=True,
            description="Samson 95x95x156; GT endmembers max-scaled to 1 (kept as in the file)",
        ),
        DatasetInfo(
            "jasper-ridge", 4, "jasper_ridge.mat", material_names=("tree", "water", "soil", "road"),
            load_options={"max_value": 5000.0},
            description="Jasper Ridge 100x100x198, uint16 divided by maxValue 5000",
        ),
        DatasetInfo(
            "urban-subimage", 4, "urban_subimage_R162_noGT.mat",
            description="HYDICE Urban sub-image 34x78x162, no ground truth",
        ),
        DatasetInfo(
            "urban", 4, "Urban_R162.mat", "end4_groundTruth.mat",
            load_options={"clip_negative": True},
            description="HYDICE Urban 307x307x162 (original release + end4 ground truth)",
        ),
        DatasetInfo(
            "urban-5", 5, "Urban_R162.mat", "end5_groundTruth.mat",
            load_options={"clip_negative": True}, description="HYDICE Urban with 5 endmembers",
        ),
        DatasetInfo(
            "urban-6", 6, "Urban_R162.mat", "end6_groundTruth.mat",
            load_options={"clip_negative": True}, description="HYDICE Urban with 6 endmembers",
        ),
        DatasetInfo(
            "apex", 4, "APEX.mat", load_options={"clip_negative": True},
            description="APEX 111x122x285 in the HySUPP layout (Y, E, A, H, W, p)",
        ),
        DatasetInfo(
            "cuprite", 12, "Cuprite_S1_R188.mat", "groundTruth_Cuprite_nEnd12.mat",
            load_options={"clip_negative": True},
            description="AVIRIS Cuprite 250x190x188 with the 12-endmember reference",
        ),
        DatasetInfo(
            "synthetic", 4, synthetic={"library": "procedural", "p": 4, "bilinear": False},
            description="64x80 linear mixture of procedural spectra, SNR 30 dB",
        ),
        DatasetInfo(
            "synthetic-bilinear", 4, synthetic={"library": "procedural", "p": 4, "bilinear": True},
            description="64x80 bilinear (Fan) mixture of procedural spectra, SNR 30 dB",
        ),
        DatasetInfo(
            "synthetic-real", 4, synthetic={"library": "real", "p": 4, "bilinear": False},
            description="64x80 linear mixture of Jasper Ridge GT spectra, SNR 30 dB",
        ),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, **options) -> Scene:
    """Load a named scene. Options override the registry's loader options (e.g. rescale_gt=True)."""
    info = dataset_info(name)
    if info.synthetic is not None:
        from hyperunmix.synthetic import make_synthetic

        params = {"H": 64, "W": 80, "snr_db": 30.0, "purity": 0.05, "seed": 0, **info.synthetic, **options}
        scene = make_synthetic(**params)
        scene.name = name
        return scene
    path, gt_path = info.path(), info.gt_path()
    for needed in [path] + ([gt_path] if gt_path else []):
        if not needed.exists():
            raise SceneError(
                f"dataset {name!r} needs the file {needed.name} in {needed.parent} (not found); "
                f"set {DATA_ENV} to the directory that holds '{SCENE_SUBDIR}/{needed.name}'"
            )
    options = {**info.load_options, **options}
    names = list(info.material_names) if info.material_names else None
    scene = load_scene(path, gt_path, n_endmembers=info.p, name=name, material_names=names, **options)
    scene.meta["gt_max_scaled"] = info.gt_max_scaled and not options.get("rescale_gt", False)
    return scene


def open_scene(dataset: str | None = None, input: str | Path | None = None, **options) -> Scene:
    """A registered dataset by name, or any file the loader reads (`input`, named after its stem).
    Options go to `load_dataset` / `load_scene` (e.g. drop_bands="1350-1450nm")."""
    if (dataset is None) == (input is None):
        raise ValueError("give either a dataset name or an input file")
    if input is not None:
        return load_scene(input, **options)
    return load_dataset(dataset, **options)


def list_datasets() -> list[dict]:
    """One row per dataset: name, p, shape (H, W, L) when loadable, available, path."""
    rows = []
    for info in DATASETS.values():
        row = {"name": info.name, "p": info.p, "shape": None, "available": info.available(),
               "path": "generated" if info.synthetic else str(info.path()), "description": info.description}
        if row["available"] and info.filename:
            row["shape"] = scene_shape(info.path())
        elif info.synthetic:
            row["shape"] = (64, 80, 198 if info.synthetic["library"] == "real" else 120)
        rows.append(row)
    return rows


def scene_shape(path: Path) -> tuple[int, int, int] | None:
    """(H, W, L) of a scene file without loading its ground truth."""
    try:
        scene = load_scene(path, clip_negative=True)
    except SceneError:
        return None
    return (scene.H, scene.W, scene.n_bands)
