"""Results tables from runs: one row per configuration, mean +- std over seeds (and RegDB's 10 trials).

    python summarize.py log/                    # every results.json under log/ -> printed and log/summary.md
    python summarize.py log/ --out table.md

A configuration is a run's dataset, search mode (SYSU) or direction (RegDB: visible->infrared and
infrared->visible are rows of their own) and arguments, less the ones that only tell runs apart (seed, RegDB
trial, paths, run name, device, workers). The arguments that differ between the configurations found label the
rows, so an ablation reads as its flags. RegDB is reported as the mean over the 10 trials, the field's protocol:
a RegDB configuration without all 10 trials (for every seed) is marked incomplete, never averaged as if whole.

Both figures of a run are shown: `last` (the final epoch, the honest figure) and `best` (the epoch with the
best rank-1 on SYSU gallery trial 0 or the RegDB test split, which is how the paper and the field's code report;
it selects on the test set).
"""
import json
import os

import numpy as np

from runs import RUN_ONLY_ARGS
from utils import ArgumentParser, UserError, atomic_write, run_cli
REGDB_TRIALS = 10
FIGURES = ("rank1", "mAP", "mINP")


def find_results(folder):
    """Every results.json below folder, loaded, in sorted path order: [(path, results dict)]."""
    if not os.path.isdir(folder):
        raise UserError(f"no such folder: {folder}")
    found = []
    for directory, _, files in sorted(os.walk(folder)):
        if "results.json" in files:
            path = os.path.join(directory, "results.json")
            try:
                with open(path) as f:
                    found.append((path, json.load(f)))
            except (OSError, ValueError) as err:
                raise UserError(f"cannot read {path}: {err}") from None
    return found


def directions(results):
    """[(direction name, last figures, best figures or None)] of one run: SYSU and the demo have one
    (their search mode); RegDB two, visible->infrared (the headline) and infrared->visible."""
    last, best = results["last"], results.get("best")
    if results["dataset"] != "regdb":
        return [(results["args"].get("mode", "all"), last, best)]
    return [("V->I", last, best),
            ("I->V", last["thermal_to_visible"], best["thermal_to_visible"] if best else None)]


def config_key(args):
    return tuple(sorted((key, json.dumps(value)) for key, value in args.items() if key not in RUN_ONLY_ARGS))


def group_runs(found):
    """{(dataset, direction, config key): [(args, last, best, pseudo_label)]}, in first-seen order."""
    groups = {}
    for _, results in found:
        for direction, last, best in directions(results):
            key = (results["dataset"], direction, config_key(results["args"]))
            groups.setdefault(key, []).append((results["args"], last, best, results.get("pseudo_label") or {}))
    return groups


def differing_args(groups):
    """The configuration arguments whose values differ between the groups: what labels the rows."""
    values = {}
    for _, _, config in groups:
        for key, value in config:
            values.setdefault(key, set()).add(value)
    keys = [key for key, seen in values.items()
            if len(seen) > 1 or any(key not in dict(config) for _, _, config in groups)]
    return sorted(keys)


def mean_std(values):
    """'m +- s' of the non-missing values ('m' for one value, '-' for none)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def completeness(dataset, runs):
    """'' for a complete group; for RegDB, a note when a seed lacks some of the 10 trials."""
    if dataset != "regdb":
        return ""
    trials_per_seed = {}
    for args, *_ in runs:
        trials_per_seed.setdefault(args.get("seed"), set()).add(args.get("trial"))
    short = {seed: len(trials) for seed, trials in trials_per_seed.items() if len(trials) < REGDB_TRIALS}
    if not short:
        return ""
    return "incomplete: " + ", ".join(f"seed {seed} has {n}/{REGDB_TRIALS} trials" for seed, n in sorted(short.items()))


def summary_table(found):
    """The markdown table of the runs found (list of (path, results))."""
    groups = group_runs(found)
    label_keys = differing_args(groups)
    header = ["dataset", "mode", "configuration", "runs"] + [f"last {f}" for f in FIGURES] + \
             [f"best {f}" for f in FIGURES] + ["pool size", "pool precision", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, direction, config), runs in groups.items():
        config = dict(config)
        label = ", ".join(f"{key}={json.loads(config[key]) if key in config else '(absent)'}" for key in label_keys)
        seeds = sorted({args.get("seed") for args, *_ in runs})
        cells = [dataset, direction, label or "(all runs alike)", f"{len(runs)} ({len(seeds)} seeds)"]
        cells += [mean_std([last[f] for _, last, _, _ in runs]) for f in FIGURES]
        cells += [mean_std([best[f] if best else None for _, _, best, _ in runs]) for f in FIGURES]
        cells += [mean_std([pool.get("pool_size") for *_, pool in runs]),
                  mean_std([pool.get("precision") for *_, pool in runs])]
        cells.append(completeness(dataset, runs))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(args):
    found = find_results(args.folder)
    if not found:
        raise UserError(f"no results.json under {args.folder}")
    table = summary_table(found)
    out = args.out or os.path.join(args.folder, "summary.md")

    def write(tmp_path):
        with open(tmp_path, "w") as f:
            f.write(f"{len(found)} runs under {args.folder}; figures in %, mean ± std over runs\n\n" + table)
    atomic_write(out, write)
    print(table, end="")
    print(f"written to {out}")


def get_args_parser():
    parser = ArgumentParser(description="Results tables: mean +- std over seeds (and RegDB trials) per configuration")
    parser.add_argument("folder", help="folder searched (recursively) for results.json files, e.g. log/")
    parser.add_argument("--out", default="", help="markdown file to write; default FOLDER/summary.md")
    return parser


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
