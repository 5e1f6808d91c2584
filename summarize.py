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
it selects on the test set). The phase gain is last minus the full evaluation at the end of the identity-only
stage (epoch --pl_start - 1): what the semi-supervised phase added, for CPL and --no_pseudo alike. The pool's
share is of the unlabeled images.
"""
import json
import os

import numpy as np

from runs import RUN_ONLY_ARGS
from utils import ArgumentParser, UserError, atomic_write, first_line, run_cli
REGDB_TRIALS = 10
FIGURES = ("rank1", "mAP", "mINP")


def find_results(folder):
    """Every results.json below folder, loaded and checked (check_results), in sorted path order:
    [(path, results dict)]."""
    if not os.path.isdir(folder):
        raise UserError(f"no such folder: {folder}")
    found = []
    for directory, _, files in sorted(os.walk(folder)):
        if "results.json" in files:
            path = os.path.join(directory, "results.json")
            try:
                with open(path) as f:
                    results = json.load(f)
            except (OSError, ValueError) as err:
                raise UserError(f"cannot read {path}: {first_line(err)}") from None
            check_results(path, results)
            found.append((path, results))
    return found


def check_results(path, results):
    """A results.json of train_mine.py: a dict with the dataset, the arguments and the last figures (RegDB: in both
    directions); anything else is named in one line rather than failing somewhere in the table."""
    def figures_ok(figures):
        return isinstance(figures, dict) and all(isinstance(figures.get(key), (int, float)) for key in FIGURES)
    problem = None
    if not isinstance(results, dict):
        problem = f"a {type(results).__name__}, not an object"
    elif not isinstance(results.get("dataset"), str) or not isinstance(results.get("args"), dict):
        problem = "no dataset or args"
    elif not figures_ok(results.get("last")):
        problem = f"no last figures ({', '.join(FIGURES)})"
    elif results["dataset"] == "regdb" and not figures_ok(results["last"].get("thermal_to_visible")):
        problem = "no thermal_to_visible figures for RegDB"
    if problem:
        raise UserError(f"{path} is not a results.json of train_mine.py ({problem})")


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
    """{(dataset, direction, config key): [(args, last, best, pseudo_label, phase)]}, in first-seen order. The phase
    gain is the headline direction's (visible->infrared for RegDB)."""
    groups = {}
    for _, results in found:
        for i, (direction, last, best) in enumerate(directions(results)):
            key = (results["dataset"], direction, config_key(results["args"]))
            phase = (results.get("phase") or {}) if i == 0 else {}
            groups.setdefault(key, []).append((results["args"], last, best, results.get("pseudo_label") or {}, phase))
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


def mean_std(values, signed=False, decimals=2):
    """'m +- s' of the non-missing values ('m' for one value, '-' for none); signed: '+m' for gains."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    number = f"{'+' if signed else ''}.{decimals}f"
    if len(values) == 1:
        return f"{values[0]:{number}}"
    return f"{np.mean(values):{number}} ± {np.std(values, ddof=1):.{decimals}f}"


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
             [f"best {f}" for f in FIGURES] + ["rank1 at pl_start", "phase gain rank1", "phase gain mAP",
                                              "pool size", "pool share", "pool precision", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, direction, config), runs in groups.items():
        config = dict(config)
        label = ", ".join(f"{key}={json.loads(config[key]) if key in config else '(absent)'}" for key in label_keys)
        seeds = sorted({args.get("seed") for args, *_ in runs})
        cells = [dataset, direction, label or "(all runs alike)", f"{len(runs)} ({len(seeds)} seeds)"]
        cells += [mean_std([last[f] for _, last, *_ in runs]) for f in FIGURES]
        cells += [mean_std([best[f] if best else None for _, _, best, *_ in runs]) for f in FIGURES]
        phases = [phase for *_, phase in runs if phase]
        cells += [mean_std([phase["at_pl_start"]["rank1"] for phase in phases])]
        cells += [mean_std([phase["gain"][f] for phase in phases], signed=True) for f in ("rank1", "mAP")]
        cells += [mean_std([pool.get(key) for *_, pool, _ in runs]) for key in ("pool_size", "share", "precision")]
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
