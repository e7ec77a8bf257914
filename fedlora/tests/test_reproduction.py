"""The reproduction page: every table cell present and equal to its source file; unfinished runs marked."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from fedlora.config import RunConfig, dump_config
from fedlora.records import RoundRecord
from fedlora.reproduction import INTERPRETATION, main, render
from fedlora.rundir import RunDir
from fedlora.summary import summarize

ROUNDS = 4
SEEDS = [42, 43, 44]
# Method offsets chosen so some reference orderings hold and others do not.
OFFSET = {"fedavg": 0.00, "svd": 0.05, "fedsvd": -0.02, "subspace": 0.10, "subspace-server-only": 0.04,
          "fedavg-penalty": 0.01}
UNFINISHED = {("svd", 44): ("running", 2), ("fedavg-penalty", 42): ("running", 1),
              ("fedavg-penalty", 43): ("failed", 3), ("fedavg-penalty", 44): ("running", 0)}
DIGITS = {"Best acc": 3, "Mean last-5": 3, "Final acc": 3, "Final loss": 4, "Basis overlap (paper)": 4,
          "Basis overlap (code)": 5, "Zero-shot acc": 3}
KEYS = {"Best acc": "best_accuracy", "Mean last-5": "mean_last5_accuracy", "Final acc": "final_accuracy",
        "Final loss": "final_loss", "Basis overlap (paper)": "basis_overlap",
        "Basis overlap (code)": "basis_overlap_code", "Zero-shot acc": "zero_shot_accuracy"}


ITEMS = 60
ITEM_LABELS = np.random.default_rng(0).integers(0, 4, ITEMS)


def metrics_for(method: str, seed: int, rounds: int, recorded: bool, cell: int = 0) -> list[dict]:
    """Per-round records; `recorded`: with the client drift keys (older sweeps lack them); `cell`
    varies the numbers of a penalty grid cell."""
    rng = np.random.default_rng(seed * 31 + len(method) + cell)
    records = [{"round": 0, "accuracy": 0.25 + rng.uniform(0, 0.01), "loss": 1.386}]
    for r in range(1, rounds + 1):
        geometry = {"basis_overlap": 0.9 + rng.uniform(0, 0.09), "basis_overlap_code": 0.95 + rng.uniform(0, 0.04),
                    "cancellation_ratio_delta": rng.uniform(0, 1)}
        records.append({"round": r, "accuracy": 0.3 + OFFSET[method] + rng.uniform(0, 0.05),
                        "loss": 1.38 - OFFSET[method] / 10 + rng.uniform(0, 0.01), "client_loss": 1.3,
                        "geometry": geometry})
        if recorded:
            penalty = rng.uniform(0, 0.01, 3) if "subspace" == method or "penalty" in method else np.zeros(3)
            drift = rng.uniform(1, 5, 3) * (1 + OFFSET[method])
            records[-1] |= {"client_update_norm": drift.tolist(), "client_penalty": penalty.tolist(),
                            "penalty_share": float(np.mean(penalty / (1.3 + penalty))),
                            "heldout_accuracy": rng.uniform(0.2, 0.5), "heldout_loss": rng.uniform(1.3, 1.4),
                            "bytes_up": int(rng.integers(10**5, 10**6)), "bytes_down": 2 * 10**6}
    return records


def item_scores(method: str, seed: int, round_idx: int, cell: int = 0) -> np.ndarray:
    """(ITEMS, 4) scores: round 0 the same for every method of a seed, trained rounds leaning toward
    the label by the method's offset."""
    if round_idx == 0:
        return np.random.default_rng([seed, 0]).normal(size=(ITEMS, 4)).astype(np.float32)
    rng = np.random.default_rng([seed, round_idx, list(OFFSET).index(method), cell])
    scores = rng.normal(size=(ITEMS, 4))
    scores[np.arange(ITEMS), ITEM_LABELS] += 0.3 + 5 * OFFSET[method] + cell / 1000
    return scores.astype(np.float32)


def write_run(folder: Path, method: str, seed: int, recorded: bool = True, switches: dict | None = None,
              progress: tuple[str, int] | None = None) -> None:
    """The files the engine writes: config.yaml, status.json, metrics.jsonl, eval_items.npz (when
    `recorded`), summary.json when done. `switches`: method.mu / a_b / lam; `progress`: (status,
    rounds done), else from UNFINISHED."""
    folder.mkdir(parents=True)
    switches = switches or {}
    cfg = RunConfig(model={"name": "tiny-encoder"}, rounds=ROUNDS, seed=seed, threads=1,
                    method={"name": method, **switches}, eval={"zero_shot": True})
    (folder / "config.yaml").write_text(dump_config(cfg))
    status, done = progress or UNFINISHED.get((method, seed), ("complete", ROUNDS))
    cell = round(1000 * switches.get("mu", 0) + 100 * switches.get("a_b", 0))
    metrics = metrics_for(method, seed, done, recorded, cell)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (folder / "status.json").write_text(json.dumps({"status": status}))
    if recorded:
        for r in range(done + 1):
            RunDir(folder).write_eval_items(r, item_scores(method, seed, r, cell), ITEM_LABELS)
    if status == "complete":
        summary = {"method": method, "seed": seed, "model": cfg.model.name,
                   **summarize([RoundRecord.from_json(m) for m in metrics]),
                   "wall_s": 10.0 + seed + OFFSET[method],
                   "machine": {"git_commit": None if method == "svd" else "c0ffee"}}
        (folder / "summary.json").write_text(json.dumps(summary))


def make_sweep(root: Path, recorded: bool = True) -> Path:
    for method in OFFSET:
        for seed in SEEDS:
            write_run(root / "tiny-encoder" / method / f"seed{seed}", method, seed, recorded)
    return root


# Penalty grid cells beside the main sweep's preset (0.05, 0.01): (mu, a_b) -> (status, rounds done).
GRID = {(0.5, 0.1): ("complete", ROUNDS), (0.5, 0.01): ("complete", ROUNDS), (0.05, 0.1): ("running", 2)}


def make_grid(root: Path, recorded: bool = True) -> Path:
    """A grid folder of one-run sweep folders, subspace seed 42 with method.mu and method.a_b set."""
    for (mu, a_b), progress in GRID.items():
        write_run(root / f"mu{mu}-ab{a_b}" / "tiny-encoder" / "subspace" / "seed42", "subspace", 42, recorded,
                  {"mu": mu, "a_b": a_b}, progress)
    return root


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path / "sweeps" / "tiny")


def tables(markdown: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Markdown tables keyed by the nearest heading above them (first table under each heading)."""
    found, heading, lines = {}, None, markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        elif line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")) and heading not in found:
            end = next((k for k, ln in enumerate(lines[i:]) if not ln.startswith("|")), len(lines) - i)
            block = lines[i:i + end]
            split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in block]
            found[heading] = (split[0], split[2:])
    return found


def summaries(sweep: Path) -> dict[tuple[str, int], dict]:
    return {(f.parent.parent.name, int(f.parent.name[4:])): json.loads(f.read_text())
            for f in sweep.rglob("summary.json")}


LABELS = {"FedAvg": "fedavg", "SVD": "svd", "FedSVD": "fedsvd", "Subspace-Reg": "subspace"}


def test_tables_match_the_source_files(sweep: Path, tmp_path: Path):
    out = tmp_path / "docs" / "results" / "fedlora.md"
    text = render([sweep], out)
    assert out.read_text() == text
    found = tables(text)
    source = summaries(sweep)
    for heading, ddof in [("Results (mean ± population std, ddof=0, as the reference table)", 0),
                          ("Results (mean ± sample std, ddof=1)", 1)]:
        header, rows = found[heading]
        assert {r[0] for r in rows} == {"FedAvg", "SVD", "FedSVD", "Subspace-Reg", "subspace-server-only",
                                       "fedavg-penalty"}
        for row in rows:
            assert len(row) == len(header) and all(row), row
            method = LABELS.get(row[0], row[0])
            done = [source[(method, s)] for s in SEEDS if (method, s) in source]
            if not done:
                assert all(c.startswith("unfinished (round") for c in row[2:]), row
                continue
            for name, cell in zip(header[2:], row[2:]):
                values = np.array([s[KEYS[name]] for s in done])
                d = DIGITS[name]
                assert cell == f"{values.mean():.{d}f} ± {values.std(ddof=ddof):.{d}f}", (method, name)
    svd_row = next(r for r in found["Results (mean ± sample std, ddof=1)"][1] if r[0] == "SVD")
    assert svd_row[1] == "2 of 3; seed 44 unfinished (round 2/4)"


def test_per_run_table_and_unfinished_marks(sweep: Path, tmp_path: Path):
    text = render([sweep], tmp_path / "page.md")
    header, rows = tables(text)["Per run"]
    assert "Zero-shot acc" in header
    source = summaries(sweep)
    assert len(rows) == len(OFFSET) * len(SEEDS)
    for row in rows:
        assert len(row) == len(header) and all(row), row
        key = (LABELS.get(row[0], row[0]), int(row[1]))
        if key in UNFINISHED:
            status, done = UNFINISHED[key]
            mark = f"unfinished (round {done}/{ROUNDS}" + (", failed)" if status == "failed" else ")")
            assert row[2] == status and all(c == mark for c in row[3:]), row
            continue
        summary = source[key]
        for name, cell in zip(header[3:], row[3:]):
            if name == "Best round":
                assert int(cell) == summary["best_round"]
            elif name == "Wall (s)":
                assert cell == f"{summary['wall_s']:.1f}"
            else:
                assert cell == f"{summary[KEYS[name]]:.{DIGITS[name]}f}", (key, name)
    zero = [s["zero_shot_accuracy"] for s in source.values()]
    assert f"{np.mean(zero):.3f} ± {np.std(zero):.3f}" in text


def test_geometry_table_is_the_last_round_of_metrics(sweep: Path, tmp_path: Path):
    header, rows = tables(render([sweep], tmp_path / "page.md"))["Geometry of the last round"]
    by_method = {r[0]: r for r in rows}
    finals = [json.loads((sweep / "tiny-encoder" / "subspace" / f"seed{s}" / "metrics.jsonl").read_text()
                         .splitlines()[-1])["geometry"]["cancellation_ratio_delta"] for s in SEEDS]
    column = header.index("Cancellation ratio (round updates)")
    assert by_method["Subspace-Reg"][column] == f"{np.mean(finals):.4f} ± {np.std(finals):.4f}"
    assert by_method["Subspace-Reg"][1] == "3 of 3" and by_method["SVD"][1] == "2 of 3"
    assert by_method["Subspace-Reg"][header.index("Mean principal angle (deg)")] == "n/a"  # not in this fixture


def test_direction_attribution_plots_and_provenance(sweep: Path, tmp_path: Path):
    out = tmp_path / "docs" / "results" / "fedlora.md"
    text = render([sweep], out)
    source = summaries(sweep)
    mean = lambda m, k: np.mean([source[(m, s)][k] for s in SEEDS if (m, s) in source])  # noqa: E731
    header, rows = tables(text)["Direction of each finding vs the reference study"]
    verdicts = {(r[0], r[1]): r for r in rows}
    sub_vs_avg = verdicts[("Best acc", "Subspace-Reg vs FedAvg")]
    assert mean("subspace", "best_accuracy") > mean("fedavg", "best_accuracy")
    assert sub_vs_avg[4] == "reproduces"
    assert f"{mean('subspace', 'best_accuracy'):.3f} vs {mean('fedavg', 'best_accuracy'):.3f}" in sub_vs_avg[3]
    # The reference has FedAvg above SVD; these runs put SVD higher.
    assert verdicts[("Best acc", "FedAvg vs SVD")][4] == "does not reproduce"
    assert all(r[4] in {"reproduces", "does not reproduce", "tie", "—"} for r in rows)
    agree = sum(source[("subspace", s)]["best_accuracy"] > source[("fedavg", s)]["best_accuracy"] for s in SEEDS)
    assert sub_vs_avg[5] == f"{agree} of 3"
    paired = [s for s in SEEDS if ("svd", s) in source]  # svd seed 44 is unfinished
    agree = sum(source[("fedsvd", s)]["best_accuracy"] > source[("svd", s)]["best_accuracy"] for s in paired)
    assert len(paired) == 2 and verdicts[("Best acc", "FedSVD vs SVD")][5] == f"{agree} of 2"

    header, rows = tables(text)["Attribution ablation"]
    by_name = {r[0].split(":")[0]: r for r in rows}
    both = by_name["Subspace-Reg − FedAvg (both parts)"]
    diffs = np.array([source[("subspace", s)]["best_accuracy"] - source[("fedavg", s)]["best_accuracy"]
                      for s in SEEDS])
    assert both[1] == f"{diffs.mean():+.3f} ± {diffs.std(ddof=1):.3f} (n=3)"
    penalty = by_name["client penalty alone"]
    assert all("unfinished (round" in c for c in penalty[1:]), penalty

    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(links) == 5 and all((out.parent / link).is_file() for link in links)
    assert all(link.startswith("fedlora/tiny/") for link in links)
    assert INTERPRETATION in text
    assert f"fedlora sweep {sweep}/tiny-encoder/fedavg/seed42/config.yaml --methods " in text
    assert "--seeds 42,43,44" in text and "rounds: 4" in text and "torch threads (config `threads`): 1" in text
    total = sum(s["wall_s"] for s in source.values())
    assert f"{total:.1f} s over {len(source)} complete runs" in text
    assert "- code (summary.json `machine.git_commit`): c0ffee, not recorded\n" in text


def test_cli_and_bad_input(sweep: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli.md"
    main(["--sweeps", str(sweep), "--out", str(out)])
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert out.read_text().startswith("# fedlora: reproduction of the reference study\n")
    main(["--sweeps", str(sweep), "--out", str(out), "--title", "fedlora: every method side by side"])
    assert out.read_text().startswith("# fedlora: every method side by side\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no run folders"):
        render([empty], tmp_path / "x.md")
    # A sweep folder that does not exist is a study not run yet: said, not fatal.
    main(["--sweeps", str(sweep), str(tmp_path / "missing"), "--out", str(out)])
    assert f"`{tmp_path / 'missing'}` does not exist: not run yet." in out.read_text()


def test_orderings_equal_at_the_precision_shown_are_ties():
    from fedlora.reproduction import _our_direction

    text, verdict = _our_direction({}, {"subspace": 0.33341, "fedavg": 0.33329}, "subspace", "fedavg", "best_accuracy")
    assert verdict == "tie" and text == "Subspace-Reg = FedAvg (0.333 vs 0.333)"
    assert _our_direction({}, {"subspace": 0.3336, "fedavg": 0.3331}, "subspace", "fedavg", "best_accuracy")[1] \
        == "reproduces"


# -- gains, client drift, penalty grid: checked against computations from the files with numpy/scipy
def final_items(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(folder / "eval_items.npz") as npz:
        return npz["labels"], npz["round_0"], npz[f"round_{ROUNDS}"]


def correct(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (scores.argmax(axis=1) == labels).astype(float)


def cross_entropy(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64)
    return np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(labels)), labels]


def t_cells(before: list[np.ndarray], after: list[np.ndarray], digits: int) -> list[str]:
    """Interval and p of a paired t test over items of the per-item means over seeds."""
    b, a = np.mean(before, axis=0), np.mean(after, axis=0)
    test = stats.ttest_rel(a, b)
    ci = test.confidence_interval(0.95)
    return [f"{(a - b).mean():+.{digits}f} [{ci.low:+.{digits}f}, {ci.high:+.{digits}f}]", f"{test.pvalue:.2g}"]


def mcnemar_cell(before: np.ndarray, after: np.ndarray) -> str:
    gained, lost = int(np.sum((after == 1) & (before == 0))), int(np.sum((before == 1) & (after == 0)))
    test = stats.binomtest(gained, gained + lost)
    ci = test.proportion_ci(0.95, method="exact")
    scale = (gained + lost) / len(before)
    return (f"{(gained - lost) / len(before):+.3f} [{scale * (2 * ci.low - 1):+.3f}, {scale * (2 * ci.high - 1):+.3f}] "
            f"p={test.pvalue:.2g}")


def test_gains_are_paired_over_items_with_seeds_averaged(sweep: Path, tmp_path: Path):
    text = render([sweep], tmp_path / "page.md")
    header, rows = tables(text)["Gains over zero-shot and over FedAvg, paired over the eval items"]
    by_method = {r[0]: r for r in rows}
    assert header.count("p") == 4 and len(rows) == len(OFFSET)
    items = {(m, s): final_items(sweep / "tiny-encoder" / m / f"seed{s}") for m, s in summaries(sweep)}
    for name, method, seeds in [("Subspace-Reg", "subspace", SEEDS), ("SVD", "svd", [42, 43])]:
        row = by_method[name]
        zero = [items[(method, s)] for s in seeds]
        fedavg = [items[("fedavg", s)] for s in seeds]
        acc_final = [correct(f, y) for y, _, f in zero]
        loss_final = [cross_entropy(f, y) for y, _, f in zero]
        assert row[2:4] == [f"{np.mean(acc_final):.3f}", f"{np.mean(loss_final):.4f}"]
        assert row[4:6] == t_cells([correct(z, y) for y, z, _ in zero], acc_final, 3)
        assert row[6:8] == t_cells([cross_entropy(z, y) for y, z, _ in zero], loss_final, 4)
        assert row[8] == ", ".join(map(str, seeds))
        assert row[9:11] == t_cells([correct(f, y) for y, _, f in fedavg], acc_final, 3)
        assert row[11:13] == t_cells([cross_entropy(f, y) for y, _, f in fedavg], loss_final, 4)
    assert by_method["SVD"][1] == "42, 43; seed 44 unfinished (round 2/4)"
    assert float(by_method["Subspace-Reg"][5]) < 0.05  # the fixture's gain over zero-shot is real
    assert by_method["FedAvg"][8:] == ["—"] * 5
    penalty = by_method["fedavg-penalty"]
    assert penalty[1].startswith("none; seed 42 unfinished (round 1/4); seed 43 unfinished (round 3/4, failed)")
    assert set(penalty[2:]) == {"n/a", "none"}
    assert "paired t test over the items" in text and "exact McNemar" in text

    header, rows = tables(text)["Per seed"]
    cells = {(r[0], r[1]): r for r in rows}
    assert len(rows) == len(OFFSET) * len(SEEDS)
    labels, zero, final = items[("subspace", 43)]
    _, _, fedavg_final = items[("fedavg", 43)]
    row = cells[("Subspace-Reg", "43")]
    assert row[2] == mcnemar_cell(correct(zero, labels), correct(final, labels))
    assert row[4] == mcnemar_cell(correct(fedavg_final, labels), correct(final, labels))
    interval, p = t_cells([cross_entropy(zero, labels)], [cross_entropy(final, labels)], 4)
    assert row[3] == f"{interval} p={p}"
    assert cells[("SVD", "44")][2:] == ["unfinished (round 2/4)"] * 4
    assert cells[("FedAvg", "42")][4:] == ["—", "—"]


def drift_of(folder: Path) -> dict[str, float]:
    trained = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()][1:]
    norms = np.array([m["client_update_norm"] for m in trained])  # (rounds, clients)
    return {"mean": norms.mean(), "first": norms[0].mean(), "last": norms[-1].mean(),
            "share": np.mean([m["penalty_share"] for m in trained])}


def test_client_drift_table(sweep: Path, tmp_path: Path):
    header, rows = tables(render([sweep], tmp_path / "page.md"))["Client drift"]
    by_method = {r[0]: r for r in rows}
    assert header == ["Method", "n", "Drift, mean over rounds", "Drift, round 1", "Drift, last round", "Penalty share"]
    for name, method, seeds in [("Subspace-Reg", "subspace", SEEDS), ("SVD", "svd", [42, 43])]:
        runs = [drift_of(sweep / "tiny-encoder" / method / f"seed{s}") for s in seeds]
        for column, key, digits in [(2, "mean", 3), (3, "first", 3), (4, "last", 3), (5, "share", 4)]:
            values = np.array([r[key] for r in runs])
            assert by_method[name][column] == f"{values.mean():.{digits}f} ± {values.std():.{digits}f}", (name, key)
    assert float(by_method["Subspace-Reg"][5].split(" ± ")[0]) > 0
    assert by_method["FedAvg"][5] == "0.0000 ± 0.0000"
    assert by_method["fedavg-penalty"][2:] == ["n/a"] * 4


def test_clients_own_models_and_bytes_table(sweep: Path, tmp_path: Path):
    header, rows = tables(render([sweep], tmp_path / "page.md"))["Clients' own models and bytes on the wire"]
    by_method = {r[0]: r for r in rows}
    assert header == ["Method", "n", "Final held-out acc (clients' own models)", "Final held-out loss",
                      "Up per round (MB)", "Down per round (MB)"]
    metrics = [RunDir(sweep / "tiny-encoder" / "svd" / f"seed{s}").read_metrics()[1:] for s in (42, 43)]
    for column, values, digits in [(2, [m[-1].heldout_accuracy for m in metrics], 3),
                                   (3, [m[-1].heldout_loss for m in metrics], 4),
                                   (4, [np.mean([r.bytes_up for r in m]) / 1e6 for m in metrics], 3)]:
        values = np.array(values)
        assert by_method["SVD"][column] == f"{values.mean():.{digits}f} ± {values.std():.{digits}f}", column
    assert by_method["SVD"][5] == "2.000 ± 0.000"
    assert by_method["fedavg-penalty"][2:] == ["n/a"] * 4


def test_penalty_grid_with_the_main_sweeps_cells(sweep: Path, tmp_path: Path):
    grid = make_grid(tmp_path / "sweeps" / "grid")
    text = render([sweep], tmp_path / "page.md", grid)
    header, rows = tables(text)["Penalty strength grid `grid`"]
    by_cell = {tuple(r[1:4]): r for r in rows}
    assert list(by_cell) == [("0", "0", "0"), ("0.05", "0.01", "1e-05"), ("0.05", "0.1", "1e-05"),
                             ("0.5", "0.01", "1e-05"), ("0.5", "0.1", "1e-05")]
    source = summaries(sweep)
    assert by_cell[("0", "0", "0")][0] == f"{sweep}/tiny-encoder/subspace-server-only/seed42"
    assert by_cell[("0.05", "0.01", "1e-05")][4] == f"{source[('subspace', 42)]['final_accuracy']:.3f}"
    assert by_cell[("0.05", "0.1", "1e-05")][4:] == ["unfinished (round 2/4)"] * 8
    folder = grid / "mu0.5-ab0.1" / "tiny-encoder" / "subspace" / "seed42"
    summary = json.loads((folder / "summary.json").read_text())
    geometry = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])["geometry"]
    labels, zero, final = final_items(folder)
    interval, p = mcnemar_cell(correct(zero, labels), correct(final, labels)).split(" p=")
    drift = drift_of(folder)
    assert by_cell[("0.5", "0.1", "1e-05")] == [
        folder.as_posix(), "0.5", "0.1", "1e-05", f"{summary['final_accuracy']:.3f}", f"{summary['final_loss']:.4f}",
        interval, p, f"{geometry['basis_overlap']:.4f}", f"{geometry['basis_overlap_code']:.5f}",
        f"{drift['share']:.4f}", f"{drift['mean']:.3f}"]
    assert by_cell[("0.5", "0.1", "1e-05")] != by_cell[("0.5", "0.01", "1e-05")]


def test_older_sweeps_and_a_missing_grid(tmp_path: Path, capsys):
    old = make_sweep(tmp_path / "sweeps" / "old", recorded=False)
    out = tmp_path / "page.md"
    main(["--sweeps", str(old), "--grid", str(tmp_path / "sweeps" / "no-grid"), "--out", str(out)])
    text = out.read_text()
    assert "Per-item eval records (eval_items.npz with the zero-shot round 0) are not in these runs" in text
    assert "Client drift is not recorded in these runs" in text
    assert f"`{tmp_path / 'sweeps' / 'no-grid'}` does not exist: the grid was not run." in text
    assert "Results (mean ± sample std, ddof=1)" in tables(text)  # the rest of the page is there

    header, rows = tables(render([old], out, make_grid(tmp_path / "sweeps" / "old-grid", recorded=False)))[
        "Penalty strength grid `old-grid`"]
    complete = [r for r in rows if not r[4].startswith("unfinished")]
    assert len(complete) == 4
    for row in complete:
        cells = dict(zip(header, row))
        assert [cells["Δ acc vs zero-shot [95% CI]"], cells["p"], cells["Penalty share"],
                cells["Drift, mean over rounds"]] == ["n/a"] * 4
        assert cells["Final acc"] != "n/a"


def test_runs_on_different_items_are_not_paired(sweep: Path, tmp_path: Path):
    folder = RunDir(sweep / "tiny-encoder" / "fedavg" / "seed42")
    folder.path.joinpath("eval_items.npz").unlink()
    for r in range(ROUNDS + 1):
        folder.write_eval_items(r, item_scores("fedavg", 42, r), (ITEM_LABELS + 1) % 4)
    with pytest.raises(ValueError, match="evaluated on different items"):
        render([sweep], tmp_path / "page.md")


def test_privacy_study_table(tmp_path: Path):
    from fedlora.reproduction import privacy_section

    folder = tmp_path / "privacy"
    assert "the study was not run" in "\n".join(privacy_section(folder))
    expected = {}
    for sigma in (0.0, 0.01):
        for seed in SEEDS:
            run = folder / f"noise{sigma}" / "tiny-encoder" / "fedavg" / f"seed{seed}"
            write_run(run, "fedavg", seed, switches={"mu": sigma})  # eval scores differ by noise level
            cfg = RunConfig(model={"name": "tiny-encoder"}, rounds=ROUNDS, seed=seed, threads=1,
                            method={"name": "fedavg"}, eval={"zero_shot": True}, federation={"weighting": "uniform"},
                            privacy={"enabled": True, "noise_multiplier": sigma})
            (run / "config.yaml").write_text(dump_config(cfg))
            lines = (run / "metrics.jsonl").read_text().splitlines()
            last = json.loads(lines[-1]) | {"privacy_epsilon": 10.0 * sigma + seed, "contribution_norms": [1.0, 3.0]}
            (run / "metrics.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")
            expected.setdefault(sigma, []).append(10.0 * sigma + seed)
    text = "\n".join(privacy_section(folder))
    for sigma, eps in expected.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| FedAvg | {sigma:g} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == f"{len(SEEDS)} of {len(SEEDS)}"
        assert cells[8] == f"{np.mean(eps):.3f} ± {np.std(eps, ddof=1):.3f}"  # epsilon of the last round
        assert cells[9] == "2.000 ± 0.000"  # mean contribution norm
    # Δ loss vs no noise: the noisy final loss minus the noise-free one, item by item, mean over
    # seeds and items; the noise-free row has none.
    def losses(cell: int) -> list[np.ndarray]:
        scores = [item_scores("fedavg", seed, ROUNDS, cell).astype(np.float64) for seed in SEEDS]
        return [-special.log_softmax(x, axis=1)[np.arange(ITEMS), ITEM_LABELS] for x in scores]

    noisy, clean = losses(10), losses(0)  # write_run's cell: 1000 x mu
    expected_cost = np.mean(np.mean(noisy, axis=0) - np.mean(clean, axis=0))
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| FedAvg |")}
    assert rows["0.01"][6].startswith(f"{expected_cost:+.4f} [") and rows["0"][6] == "—"
    assert expected_cost < 0  # the fake noisy runs lean further toward the labels


def test_every_method_of_a_comparison_plot_has_its_own_line(tmp_path, monkeypatch):
    """Thirteen methods outnumber matplotlib's ten colours: no two lines may look alike."""
    from fedlora import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    runs = [(f"method{i}", [RoundRecord(round=0, accuracy=0.3, loss=1.37),
                            RoundRecord(round=1, accuracy=0.3 + i / 100, loss=1.37 - i / 100)]) for i in range(13)]
    plots.plot_comparison(runs, tmp_path)
    assert figures
    for fig in figures:
        lines = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("method")]
        assert len(lines) == 13
        assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 13
