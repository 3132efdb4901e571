"""Collect every experiment's results under the output root into one markdown table.

Reads, for each ``<output-root>/<exp>/``: ``test/test_results.json`` (UCF101 top-1),
``test_hmdb/test_results.json`` (HMDB51 top-1) and ``test_retrieval/retrieval.json`` (R@1/5/10/20/50),
as the launchers in paper_scripts/ write them, and puts the published number (METHOD.md §9) in brackets
beside each reproduced one. Usage:

    python paper_scripts/collect_results.py [--output-root output] [--out results.md]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.card import CARD_NAME, load_card, summary_line, write_card  # noqa: E402
from utils.atomic import write_text  # noqa: E402

COMMON_SH = Path(__file__).with_name("common.sh")
RECALL_KS = (1, 5, 10, 20, 50)
COLUMNS = ("ucf101", "hmdb51") + tuple(f"R@{k}" for k in RECALL_KS)
# Where each column's number lives, relative to <output-root>/<exp>/.
SOURCES = {"ucf101": ("test", "test_results.json", "top1"), "hmdb51": ("test_hmdb", "test_results.json", "top1"),
           **{f"R@{k}": ("test_retrieval", "retrieval.json", f"R@{k}") for k in RECALL_KS}}
NET_NAMES = {"r21d": "R(2+1)D-10", "r3d": "R3D-10", "c3d": "C3D", "s3d": "S3D", "r3d_18": "R3D-18",
             "r21d_18": "R(2+1)D-18"}
# METHOD.md §9 (top-1 %, split 1), keyed by (model, mode, net, pretraining data).
PUBLISHED = {
    ("simclr", "clip-sr-tc", "r21d", "k400"): {"ucf101": 82.0, "hmdb51": 51.2, "R@1": 46.7, "R@5": 63.1,
                                              "R@10": 69.7, "R@20": 78.0, "R@50": 87.8},
    ("simclr", "clip-sr-tc", "r21d", "ucf101"): {"ucf101": 79.0, "hmdb51": 45.4},
    ("moco", "clip-sr-tc", "r21d", "ucf101"): {"ucf101": 78.5, "hmdb51": 47.5},
    ("iic", "repeat-res", "r3d", "ucf101"): {"ucf101": 72.8, "hmdb51": 35.3, "R@1": 36.5, "R@5": 54.1, "R@10": 62.9,
                                            "R@20": 72.4, "R@50": 83.4},
    ("iic", "shuffle-res", "r3d", "ucf101"): {"ucf101": 74.4, "hmdb51": 38.3, "R@1": 34.6, "R@5": 53.0, "R@10": 62.3,
                                             "R@20": 71.7, "R@50": 82.4},
    ("iic", "repeat-u", "r3d", "ucf101"): {"ucf101": 72.7, "hmdb51": 36.8, "R@1": 41.8, "R@5": 60.4, "R@10": 69.5,
                                          "R@20": 78.4, "R@50": 87.7},
    ("iic", "shuffle-v", "r3d", "ucf101"): {"ucf101": 67.0, "hmdb51": 34.0, "R@1": 42.4, "R@5": 60.9, "R@10": 69.2,
                                           "R@20": 77.1, "R@50": 86.5},
    # the CMC baseline as the IIC authors ran it
    ("iic", "none-res", "r3d", "ucf101"): {"R@1": 26.4, "R@5": 37.7, "R@10": 45.1, "R@20": 53.2, "R@50": 66.3},
}


# The settings behind the published numbers, as METHOD.md §5.6, §6, §7 and §9 state them; a setting METHOD.md
# does not state is left out, and so never reported as a difference.
_DUALVAR_SETTINGS = {"split": 1, "pretraining epochs": 200, "pretraining global batch": 64,
                     "pretraining processes": 8, "pretraining clip": "16×112², stride 4",
                     "pretraining checkpoint epoch": 190, "evaluation": "finetune all layers",
                     "finetuning clip": "16×112², stride 2", "test clips × crops": "10 × 1"}
_IIC_SETTINGS = {"split": 1, "pretraining epochs": 240, "pretraining global batch": 16}


def published_settings(model: str, data: str) -> dict:
    if model in ("simclr", "moco"):
        return {**_DUALVAR_SETTINGS, "finetuning epochs": 150 if data == "k400" else 100}
    return dict(_IIC_SETTINGS) if model == "iic" else {}


def card_settings(card: dict) -> dict:
    """A card's values under the keys of ``published_settings``."""
    def clip(c: dict) -> str:
        text = f"{c.get('num_frames')}×{c.get('size')}², stride {c.get('stride')}"
        return text if c.get("input", "rgb") == "rgb" else f"{text}, {c['input']} input"

    ours = {"split": card["data"]["split"],
            "test clips × crops": f"{card['evaluation']['clips']} × {card['evaluation']['crops']}"}
    pre, ft = card.get("pretraining"), card.get("finetuning")
    if pre:
        ours.update({"pretraining epochs": pre["epochs"], "pretraining global batch": pre["global_batch"],
                     "pretraining processes": pre["processes"], "pretraining clip": clip(pre["clip"]),
                     "pretraining checkpoint epoch": pre["checkpoint_epoch"]})
    if ft:
        ours.update({"evaluation": "finetune all layers" if ft["what"] == "all layers" else ft["what"],
                     "finetuning epochs": ft["epochs"], "finetuning clip": clip(ft["clip"])})
    else:
        ours["evaluation"] = "frozen features"
    return ours


def differences(card: dict, published: dict) -> list[str]:
    """'<setting>: <ours> here, <published> published' for each stated setting that differs."""
    ours = card_settings(card)
    return [f"{key}: {ours.get(key, 'none')} here, {value} published" for key, value in published.items()
            if ours.get(key) != value]


class ResultsError(Exception):
    """A results file that exists but cannot be used; the message names it."""


def read_experiment_table(path: Path = COMMON_SH) -> dict[str, tuple[str, str, str, str]]:
    """common.sh's EXPERIMENTS table: name -> (model, mode, net, pretraining data)."""
    block = re.search(r"^declare -A EXPERIMENTS=\((.*?)^\)", path.read_text(), flags=re.M | re.S).group(1)
    rows = re.findall(r'^\s*\[([^\]]+)\]="(\S+) (\S+) (\S+) (\S+)"', block, flags=re.M)
    return {name: tuple(fields) for name, *fields in rows}


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: cannot read it as JSON ({e}); delete it and re-run that mode") from e
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_metric(exp_dir: Path, column: str) -> float | None:
    folder, name, key = SOURCES[column]
    path = exp_dir / folder / name
    if not path.is_file():
        return None
    value = read_json(path).get(key)
    if not isinstance(value, (int, float)):
        raise ResultsError(f"{path}: no number under '{key}' (found {value!r}); re-run that mode")
    return float(value)


def describe(exp_dir: Path, table: dict) -> tuple[str, str, str, str]:
    """(model, mode, net, pretraining data) from the experiment table, else from the runs' configs."""
    if exp_dir.name in table:
        return table[exp_dir.name]
    config = {}
    for folder, name, _ in SOURCES.values():
        path = exp_dir / folder / name
        if path.is_file():
            config = read_json(path).get("config") or {}
            break
    pretrain_config = exp_dir / "pretrain" / "config.json"
    if pretrain_config.is_file():
        config = read_json(pretrain_config)
        return (config.get("model", "?"), config.get("mode", "?"), config.get("net", "?"), config.get("dataset", "?"))
    return ("random init", "", config.get("net", "?"), "none")


def results_files(exp_dir: Path) -> dict[str, Path]:
    """{results file relative to exp_dir: path} of each result that has one (its card sits beside it)."""
    files = {f"{folder}/{name}" for folder, name, _ in SOURCES.values()}
    return {name: exp_dir / name for name in sorted(files) if (exp_dir / name).is_file()}


def collect(output_root: Path, table: dict | None = None) -> list[dict]:
    """One row per experiment folder with at least one result, sorted by name."""
    if not output_root.is_dir():
        raise ResultsError(f"--output-root {output_root}: no such folder; pass the OUTPUT_ROOT the launchers used")
    table = read_experiment_table() if table is None else table
    rows = []
    for exp_dir in sorted(p for p in output_root.iterdir() if p.is_dir()):
        values = {column: read_metric(exp_dir, column) for column in COLUMNS}
        if all(v is None for v in values.values()):
            continue
        model, mode, net, data = describe(exp_dir, table)
        result_files = results_files(exp_dir)
        cards = {}
        for name, path in result_files.items():
            try:
                if not path.with_name(CARD_NAME).is_file():  # a run from before cards: write it now, from its files
                    write_card(path)
                cards[name] = load_card(path)
            except ValueError as e:
                raise ResultsError(str(e)) from e
        published = PUBLISHED.get((model, mode, net, data), {})
        rows.append({"experiment": exp_dir.name, "method": f"{model} {mode}".strip(), "backbone": NET_NAMES.get(net, net),
                     "pretrain": data, "values": values, "published": published, "cards": cards,
                     "result_files": result_files,
                     "published_settings": published_settings(model, data) if published else {}})
    return rows


def cell(value: float | None, published: float | None) -> str:
    ours = "–" if value is None else f"{value:.1f}"
    return ours if published is None else f"{ours} ({published:.1f})"


def tested_on(row: dict) -> str:
    """The data set whose test split a row's first top-1 and R@k come from: the demo tests on itself."""
    return "demo" if row["pretrain"] == "demo" else "UCF101"


CARD_LABELS = {"test/test_results.json": "test", "test_hmdb/test_results.json": "HMDB51 test",
               "test_retrieval/retrieval.json": "retrieval"}


def card_links(row: dict, link_base: Path) -> str:
    return " ".join(f"[{CARD_LABELS[name]}]({Path(os.path.relpath(path.with_name(CARD_NAME), link_base)).as_posix()})"
                    for name, path in row["result_files"].items())


def settings_lines(rows: list[dict]) -> list[str]:
    """Per row: its card in one line (the UCF101 or demo test's, else the retrieval's), the published
    settings where a published number sits beside it, and where the two differ."""
    lines = []
    for row in rows:
        name = next(iter(row["cards"]))
        card = row["cards"][name]
        line = f"- **{row['experiment']}** ({CARD_LABELS[name]} card): {summary_line(card)}."
        if row["published_settings"]:
            stated = ", ".join(f"{k} {v}" for k, v in row["published_settings"].items())
            diff = differences(card, row["published_settings"])
            line += f" Published (METHOD.md): {stated}." + (f" **Differs**: {'; '.join(diff)}." if diff else "")
        lines.append(line)
    return lines


def markdown_table(rows: list[dict], link_base: Path | None = None) -> str:
    """The results table, each row linked to its reproduction cards, then each row's card in one line."""
    link_base = Path.cwd() if link_base is None else link_base
    # head the columns by the data set the rows were tested on; a "tested on" column when they differ
    tested = sorted({tested_on(row) for row in rows})
    first = f"{tested[0]} top-1" if len(tested) == 1 else "top-1 (tested on)"
    header = ["experiment", "method", "backbone", "pretrain data", first, "HMDB51 top-1",
              *(f"R@{k}" for k in RECALL_KS), "cards"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [cell(row["values"][c], row["published"].get(c)) for c in COLUMNS]
        if len(tested) > 1:
            cells[0] += f" ({tested_on(row)})"
        lines.append("| " + " | ".join([row["experiment"], row["method"], row["backbone"], row["pretrain"], *cells,
                                        card_links(row, link_base)]) + " |")
    lines += ["", "Settings of each row (its reproduction card, card.json beside the results):", *settings_lines(rows)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- seeds (the miniature)

# metric -> (file under <method>/seed<N>/, key)
SEED_METRICS = {"knn_top1": ("test_retrieval/retrieval.json", "knn_top1"),
                "linear_probe_top1": ("test_retrieval/retrieval.json", "linear_probe_top1"),
                "finetune_top1": ("test/test_results.json", "top1"),
                "R@1": ("test_retrieval/retrieval.json", "R@1"),
                "reversal_sensitivity": ("reversal.json", "reversal_sensitivity")}
# shuffle-rank accuracies of the pretraining's last epoch (means over its iterations), from its log
LOG_METRICS = ("acc_rank_identity", "acc_rank_shuffled")
LOG_FILE = "pretrain/log.jsonl"
DIRECTION_FILE = "test/test_results.json"
SEED_HEADERS = {"knn_top1": "kNN top-1", "linear_probe_top1": "linear probe top-1", "finetune_top1": "finetune top-1",
                "R@1": "R@1", "acc_rank_identity": "rank acc. identity", "acc_rank_shuffled": "rank acc. shuffled",
                "reversal_sensitivity": "reversal sensitivity"}
# fractions and ratios, shown with two decimals (the rest are percentages)
UNIT_METRICS = {"acc_rank_identity", "acc_rank_shuffled", "reversal_sensitivity"}


def direction_metric(pair: tuple[str, str]) -> str:
    return f"direction {pair[0]}/{pair[1]}"


def direction_accuracy(confusion: list[list[int]], class_names: list[str], pair: tuple[str, str]) -> float | None:
    """Of the test videos of the two classes of an arrow-of-time ``pair`` that are predicted as either of them,
    the percentage whose direction is right (50: blind to the arrow of time); None when there is none."""
    if not all(name in class_names for name in pair):
        raise ResultsError(f"--direction-pairs: no class {next(n for n in pair if n not in class_names)!r} in the "
                           f"test results (classes: {', '.join(class_names)})")
    a, b = (class_names.index(name) for name in pair)
    right = confusion[a][a] + confusion[b][b]
    either = right + confusion[a][b] + confusion[b][a]
    return 100 * right / either if either else None


def last_epoch_values(log: Path) -> dict[str, float]:
    """The last ``"kind": "epoch"`` entry of a run's log.jsonl (empty when there is none)."""
    last = {}
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{log}: a line is not JSON ({e}); re-run that pretraining") from e
        if entry.get("kind") == "epoch":
            last = entry
    return last


def read_pairs(path: Path | None) -> list[tuple[str, str]]:
    """The arrow-of-time pairs of a data set: one pair of class names per line (make_demo_data.py writes them)."""
    if path is None:
        return []
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise ResultsError(f"--direction-pairs {path}: {e}") from e
    if any(len(line) != 2 for line in lines):
        raise ResultsError(f"--direction-pairs {path}: expected two class names per line")
    return [tuple(line) for line in lines]


def seed_values(method_dir: Path, pairs: list[tuple[str, str]] = ()) -> dict[int, dict[str, float]]:
    """{seed: {metric: value}} from ``<method_dir>/seed<N>/``; a metric whose file is missing is left out."""
    per_seed = {}
    for seed_dir in sorted(method_dir.glob("seed*"), key=lambda p: p.name):
        if not seed_dir.is_dir() or not seed_dir.name[4:].isdigit():
            continue
        values = {}
        for metric, (name, key) in SEED_METRICS.items():
            path = seed_dir / name
            if path.is_file():
                value = read_json(path).get(key)
                if not isinstance(value, (int, float)):
                    raise ResultsError(f"{path}: no number under '{key}' (found {value!r}); re-run that step")
                values[metric] = float(value)
        if (seed_dir / LOG_FILE).is_file():
            last = last_epoch_values(seed_dir / LOG_FILE)
            values.update({m: float(last[m]) for m in LOG_METRICS if isinstance(last.get(m), (int, float))})
        if pairs and (seed_dir / DIRECTION_FILE).is_file():
            test = read_json(seed_dir / DIRECTION_FILE)
            for pair in pairs:
                accuracy = direction_accuracy(test["confusion_matrix"], test["class_names"], pair)
                if accuracy is not None:
                    values[direction_metric(pair)] = accuracy
        if values:
            per_seed[int(seed_dir.name[4:])] = values
    return per_seed


def mean_std(values: list[float]) -> dict[str, float | int]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def metric_order(pairs: list[tuple[str, str]]) -> list[str]:
    """The table's columns: the four accuracies, the direction of each pair, shuffle-rank, reversal."""
    names = list(SEED_HEADERS)
    return names[:4] + [direction_metric(p) for p in pairs] + names[4:]


def summarize_seeds(root: Path, methods: list[str] | None = None, pairs: list[tuple[str, str]] = ()) -> dict:
    """Per-seed values and mean / std per method and metric for every ``<root>/<method>/seed<N>/``."""
    if not root.is_dir():
        raise ResultsError(f"--output-root {root}: no such folder")
    names = methods if methods is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    order = metric_order(pairs)
    summary = {}
    for name in names:
        per_seed = seed_values(root / name, pairs)
        if not per_seed:
            continue
        metrics = sorted({m for values in per_seed.values() for m in values}, key=order.index)
        summary[name] = {"seeds": sorted(per_seed), "per_seed": {str(s): v for s, v in per_seed.items()},
                         "metrics": {m: mean_std([v[m] for v in per_seed.values() if m in v]) for m in metrics},
                         "card": seeds_card(root / name, sorted(per_seed))}
    if not summary:
        raise ResultsError(f"no <method>/seed<N>/ results under {root}: run paper_scripts/run/miniature.sh first")
    return summary


def seeds_card(method_dir: Path, seeds: list[int]) -> dict | None:
    """One card for a method's seeds: the first seed's frozen-feature card (else its test card) with every seed
    listed, and the settings that vary between the seeds besides the seed itself (none, for a fair comparison)."""
    for name in sorted({file for file, _ in SEED_METRICS.values()}, reverse=True):  # retrieval first
        cards = [load_card(method_dir / f"seed{s}" / name) for s in seeds if (method_dir / f"seed{s}" / name).is_file()]
        if cards:
            settings = [card_settings(c) for c in cards]
            varying = sorted({k for s in settings[1:] for k in set(s) | set(settings[0]) if s.get(k) != settings[0].get(k)})
            return {**cards[0], "seeds": seeds, "varies_between_seeds": varying}
    return None


def format_stats(stats: dict | None, metric: str, seeds: int) -> str:
    if stats is None:
        return "–"
    digits = 2 if metric in UNIT_METRICS else 1
    return (f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
            + ("" if stats["n"] == seeds else f" (n={stats['n']})"))


def seeds_table(summary: dict, pairs: list[tuple[str, str]] = ()) -> str:
    """Markdown: one row per method, mean ± std (seed count) of each metric; columns no row has are left out."""
    metrics = [m for m in metric_order(pairs) if any(m in entry["metrics"] for entry in summary.values())]
    header = ["method", "seeds", *(SEED_HEADERS.get(m, m) for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in summary.items():
        cells = [format_stats(entry["metrics"].get(m), m, len(entry["seeds"])) for m in metrics]
        lines.append("| " + " | ".join([name, str(len(entry["seeds"])), *cells]) + " |")
    cards = [(name, entry["card"]) for name, entry in summary.items() if entry.get("card")]
    if cards:
        lines += ["", "Settings of each row (its reproduction card; all of them in summary.json):"]
        for name, card in cards:
            varying = card["varies_between_seeds"]
            lines.append(f"- **{name}**: {summary_line(card)}; mean ± std over the seeds."
                         + (f" **Varies between seeds**: {', '.join(varying)}." if varying else ""))
    return "\n".join(lines) + "\n"


PRIMARY_METRIC = "knn_top1"  # the miniature's primary metric, fixed before any mutant ran


def compare_with_correct(summary: dict, comparisons: list[tuple[str, str]], reference: str = "random",
                         primary: str = PRIMARY_METRIC) -> tuple[str, dict]:
    """Markdown and JSON comparing each run with a planted bug to the correct code it was planted in.

    ``comparisons`` are (bug run, correct run) names of ``summary``. For each metric both have: the difference of
    the means, bug − correct, and the standard deviation of that difference, sqrt(s_b² / n_b + s_c² / n_c). The
    instrument detects a bug when the primary metric moves toward ``reference`` (random weights) by more than
    two standard deviations of the difference.
    """
    results = {}
    for bug, correct in comparisons:
        missing = [name for name in (bug, correct, reference) if name not in summary]
        if missing:
            raise ResultsError(f"--compare {bug}={correct}: no seed results for {', '.join(missing)}")
        entry = {}
        for metric in summary[bug]["metrics"]:  # in the table's order
            b, c = summary[bug]["metrics"][metric], summary[correct]["metrics"].get(metric)
            if c is None:
                continue
            difference = b["mean"] - c["mean"]
            sd = (b["std"] ** 2 / b["n"] + c["std"] ** 2 / c["n"]) ** 0.5
            entry[metric] = {"difference": difference, "sd": sd}
        if primary not in entry or primary not in summary[reference]["metrics"]:
            raise ResultsError(f"--compare {bug}={correct}: {primary} is missing for {bug}, {correct} or {reference}")
        towards = summary[reference]["metrics"][primary]["mean"] - summary[correct]["metrics"][primary]["mean"]
        move = entry[primary]
        entry["detected"] = bool(move["difference"] * towards > 0 and abs(move["difference"]) > 2 * move["sd"])
        results[bug] = {"correct": correct, **entry}
    metrics = list(dict.fromkeys(m for r in results.values() for m in r if m not in ("correct", "detected")))
    header = ["bug run", "correct run", *(f"Δ {SEED_HEADERS.get(m, m)}" for m in metrics),
              f"detected ({SEED_HEADERS[primary]} toward {reference} by > 2 sd)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for bug, r in results.items():
        digits = {m: 2 if m in UNIT_METRICS else 1 for m in metrics}
        cells = ["–" if m not in r else f"{r[m]['difference']:+.{digits[m]}f} ± {r[m]['sd']:.{digits[m]}f}"
                 for m in metrics]
        lines.append("| " + " | ".join([bug, r["correct"], *cells, "yes" if r["detected"] else "no"]) + " |")
    return "\n".join(lines) + "\n", results


GATE_TOP1_OVER_COLOUR_PROBE = 2.0
GATE_DIRECTION = 75.0


def calibration_gate(summary: dict, pairs: list[tuple[str, str]]) -> tuple[str, dict]:
    """The gate a miniature recipe must pass (docs/miniature.md#calibration), for every supervised row: its mean
    top-1 at least twice the colour statistics' linear probe, and for every arrow-of-time pair a mean direction
    accuracy of at least 75 % (50 % is blind to the arrow of time)."""
    colour = summary.get("colour_stats", {}).get("metrics", {}).get("linear_probe_top1")
    if colour is None:
        raise ResultsError("--gate: no colour_stats row with a linear probe to compare with")
    threshold = GATE_TOP1_OVER_COLOUR_PROBE * colour["mean"]
    results, lines = {}, []
    for name, entry in summary.items():
        if not name.startswith("supervised") or "finetune_top1" not in entry["metrics"]:
            continue
        checks = {"top1": entry["metrics"]["finetune_top1"]["mean"] >= threshold}
        for pair in pairs:
            direction = entry["metrics"].get(direction_metric(pair))
            checks[direction_metric(pair)] = direction is not None and direction["mean"] >= GATE_DIRECTION
        results[name] = {"passes": all(checks.values()), "checks": checks}
        failed = [k for k, ok in checks.items() if not ok]
        lines.append(f"- **{name}**: {'passes' if not failed else 'fails (' + ', '.join(failed) + ')'}")
    head = (f"Gate: supervised top-1 ≥ {GATE_TOP1_OVER_COLOUR_PROBE:g} × the colour statistics' probe "
            f"({threshold:.1f}), and each pair's direction accuracy ≥ {GATE_DIRECTION:g} %, means over the seeds:")
    return "\n".join([head, "", *lines]) + "\n", results


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output-root", type=Path, default=Path("output"),
                        help="the launchers' OUTPUT_ROOT, holding one folder per experiment")
    parser.add_argument("--experiments", nargs="*", default=None,
                        help="only these experiment folders (default: every one with results)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    parser.add_argument("--seeds", action="store_true",
                        help="aggregate seeds instead: every <output-root>/<method>/seed<N>/ (the miniature's layout) "
                             "becomes one row of mean ± std over its seeds; --experiments picks and orders the methods")
    parser.add_argument("--summary", type=Path, default=None,
                        help="with --seeds: also write per-seed values and mean / std per method and metric as JSON")
    parser.add_argument("--direction-pairs", type=Path, default=None, metavar="FILE",
                        help="with --seeds: the data set's arrow-of-time pairs, two class names per line "
                             "(make_demo_data.py writes splits/arrow_of_time_pairs.txt); adds each pair's direction "
                             "accuracy of the finetuned classifiers")
    parser.add_argument("--gate", action="store_true",
                        help="with --seeds: check every supervised* row against the miniature's calibration gate "
                             "(top-1 >= 2 x the colour_stats row's probe; each --direction-pairs pair >= 75 %%)")
    parser.add_argument("--compare", nargs="*", default=[], metavar="BUG=CORRECT",
                        help="with --seeds: compare runs with a planted bug to the correct runs (train_ssl.py "
                             "--plant-bug): differences of the means with their standard deviation, and whether the "
                             f"primary metric ({PRIMARY_METRIC}) moved toward random weights by more than 2 of them")
    return parser


def main_seeds(args: argparse.Namespace) -> str:
    pairs = read_pairs(args.direction_pairs)
    comparisons = []
    for text in args.compare:
        bug, _, correct = text.partition("=")
        if not bug or not correct:
            raise ResultsError(f"--compare {text}: expected BUG=CORRECT, two run names")
        comparisons.append((bug, correct))
    names = args.experiments
    if names is not None and comparisons:
        names = list(dict.fromkeys([*names, "random", *(n for pair in comparisons for n in pair)]))
    summary = summarize_seeds(args.output_root, names, pairs)
    text = (seeds_table(summary, pairs) + "\nMean ± sample standard deviation over seeds, on the test split of the "
            "data set the runs used: accuracies and R@1 in percent; direction: of the test videos of a pair's two "
            "classes predicted as either of them, the percentage whose direction is right (50: blind to the arrow of "
            "time); shuffle-rank accuracies (pretraining's last epoch) and reversal sensitivity as fractions.\n")
    if args.gate:
        gate_text, gate = calibration_gate(summary, pairs)
        text += "\n" + gate_text
        summary = {**summary, "gate": gate}
    if comparisons:
        table, compared = compare_with_correct(summary, comparisons)
        summary = {**summary, "comparisons": compared}
        text += "\nPlanted learning bugs against the correct code (bug − correct, ± the standard deviation of the " \
                "difference):\n\n" + table
    if args.summary is not None:
        write_text(args.summary, json.dumps(summary, indent=2) + "\n")
    if args.out is not None:
        write_text(args.out, text)
    print(text, end="")
    return text


def main(args: argparse.Namespace) -> str:
    if args.seeds:
        return main_seeds(args)
    rows = collect(args.output_root)
    if args.experiments is not None:
        order = {name: i for i, name in enumerate(args.experiments)}
        rows = sorted((r for r in rows if r["experiment"] in order), key=lambda r: order[r["experiment"]])
    if not rows:
        raise ResultsError(f"no results under {args.output_root}: run the test, test_hmdb or test_retrieval "
                           "launchers first")
    shown = any(row["published"].get(c) is not None for row in rows for c in COLUMNS)
    note = "\nIn brackets: the published number (METHOD.md §9).\n" if shown else ""
    text = markdown_table(rows, args.out.resolve().parent if args.out is not None else None) + note
    if args.out is not None:
        write_text(args.out, text)
    print(text, end="")
    return text


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ResultsError as e:
        sys.exit(f"collect_results.py: {e}")
