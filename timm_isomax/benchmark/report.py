"""The benchmark's report: mean and standard deviation over seeds per (head, score), Markdown tables (the full
per-protocol table, the headline of validation-chosen scores, the oracle), and the tables the README and docs
quote, refilled from the committed runs."""
import json
import re
import statistics
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..data import dataset_name
from ..models.classifier import HEAD_TITLES
from ..ood.detectors import KNN_KS
from ..ood.metrics import METRIC_NAMES, METRIC_TITLES

__all__ = ["summarize", "summary_json", "markdown_table", "headline_table", "validated_headline_table", "test_validated_headline_table",
           "result_tables", "fill_result_tables", "CHOSEN", "TTA_SUFFIX", "SCORE_LABELS", "TABLE_METRICS"]

_HEAD_LABELS = {"source": "Source (no fine-tune)", "softmax": "SoftMax", **HEAD_TITLES}
_SCORE_LABELS = {"msp": "MSP", "max_logit": "max logit", "energy": "energy", "entropic": "entropic", "mds": "MDS",
                 "mmls": "MMLS", "mmles": "MMLES", "norm_cosine": "norm x cosine", "feature_norm": "feature norm",
                 "mahalanobis": "Mahalanobis", "vim": "ViM", "react": "ReAct", "ash": "ASH",
                 **{f"knn{k}": f"KNN k={k}" for k in KNN_KS}}
# How each (head, score) pair is named in tables and plots.
SCORE_LABELS: Dict[Tuple[str, str], str] = {(head, score): f"{_HEAD_LABELS[head]}, {label}"
                                            for head in _HEAD_LABELS for score, label in _SCORE_LABELS.items()}
# The metrics of the full per-protocol table, in column order (FPR@95 and TNR@95 take ID as positive).
TABLE_METRICS = ("auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out")
# Lower is better for these (bold marks the lowest mean).
_LOWER_IS_BETTER = {"fpr_at_95_tpr", "fpr95_ood_positive"}

def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _with_group_means(metrics: Dict[str, Dict[str, float]], groups: Dict[str, List[str]]) -> Dict[str, Dict[str, float]]:
    # OpenOOD's near / far: the plain mean of the group's OOD sets, per metric, within one run
    out = dict(metrics)
    for group, sets in groups.items():
        out[f"{group} mean"] = {m: statistics.fmean(metrics[s][m] for s in sets) for m in metrics[sets[0]]}
    return out


def summarize(runs: Sequence[Dict]) -> List[Dict]:
    """Mean and sample standard deviation over seeds, per protocol and (head, score).

    Each entry: ``protocol``, ``head``, ``score``, ``label``, ``seeds``, ``accuracy``, ``throughput``
    (inference img/s), ``throughput_ratio`` (over the SoftMax model's, measured side by side in each seed's
    run), ``metrics[ood][metric]`` (also ``"<group> mean"`` for the protocol's OOD groups), plus the
    head's training seconds and ``hardware`` (the machines its runs trained on, sorted). Every statistic is
    ``{"mean", "std", "n"}``. Heads are summarised over the seeds that have them.
    """
    by_protocol: Dict[str, List[Dict]] = {}
    for run in runs:
        by_protocol.setdefault(run["protocol"]["name"], []).append(run)
    summary = []
    for name, protocol_runs in by_protocol.items():
        protocol_runs = sorted(protocol_runs, key=lambda run: run["seed"])
        definition = protocol_runs[0]["protocol"]
        groups = definition.get("ood_groups", {})
        for head in ("source", *definition["heads"]):
            pairs = [(run, row) for run in protocol_runs for row in run["rows"] if row["head"] == head]
            if not pairs:
                continue
            ratios = []
            for run, row in pairs:
                base = next((r for r in run["rows"] if r["head"] == "softmax"), None)
                if base is not None and "throughput" in row and "throughput" in base:
                    ratios.append(row["throughput"] / base["throughput"])
            rows = [row for _, row in pairs]
            oods = list(rows[0]["metrics"][next(iter(rows[0]["metrics"]))])
            columns = oods + [f"{group} mean" for group in groups]
            for score in rows[0]["metrics"]:
                per_run = [_with_group_means(row["metrics"][score], groups) for row in rows]
                summary.append(dict(
                    protocol=name, head=head, score=score, arch=rows[0]["arch"],
                    label=SCORE_LABELS.get((head, score), f"{head}, {score}"),
                    seeds=[run["seed"] for run, _ in pairs], id_dataset=definition["id_dataset"],
                    ood_datasets=oods, columns=columns, train=definition["train"],
                    head_settings=definition.get("head_settings", {}),
                    hardware=sorted({row.get("hardware") or run.get("hardware", "") for run, row in pairs}),
                    seconds=sum(row.get("train_seconds", 0.0) for row in rows),
                    wall_seconds=sum(row.get("wall_seconds", 0.0) for row in rows),
                    accuracy=_mean_std([row["accuracy"] for row in rows]),
                    throughput=_mean_std([row["throughput"] for row in rows if "throughput" in row]) if ratios else None,
                    throughput_ratio=_mean_std(ratios) if ratios else None,
                    distance_scale=_mean_std([row["distance_scale"] for row in rows])
                    if all("distance_scale" in row for row in rows) else None,
                    metrics=_column_stats(per_run, columns)))
            if all("selection" in row for row in rows):  # runs that chose their score on validation (issue 29)
                chosen = dict(summary[-1], score=CHOSEN, choices=[row["score"] for row in rows],
                              label=f"{_HEAD_LABELS.get(head, head)}, validation-chosen ({_choices_text(rows)})")
                per_run = [_with_group_means(row["metrics"][row["score"]], groups) for row in rows]
                chosen["metrics"] = _column_stats(per_run, columns)
                summary.append(chosen)
            plain = [entry for entry in summary if entry["protocol"] == name and entry["head"] == head
                     and entry["score"] != CHOSEN]
            if all("tta" in row for row in rows):  # test-time augmentation: rows of their own, never the baseline
                summary += _tta_entries(plain, rows, groups, columns)
    return summary


# significant digits of the floats in summary.json: 6 keep every metric far below the tables' 0.01 points
_SUMMARY_DIGITS = 6


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.{_SUMMARY_DIGITS}g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def summary_json(summary: Sequence[Dict]) -> str:
    """``summary`` as the text of summary.json: one row per line, floats to 6 significant digits.

    One row per line keeps a new run's diff to the rows it changed, and the rounding keeps the committed
    file small (the seed files hold the full values). ``json.loads`` reads it back.

        >>> (output / "summary.json").write_text(summary_json(summarize(load_runs(output))))
    """
    return "[\n" + ",\n".join(json.dumps(_rounded(row)) for row in summary) + "\n]\n"


def _column_stats(per_run: Sequence[Dict], columns: Sequence[str]) -> Dict[str, Dict[str, Dict[str, float]]]:
    # mean ± std over the runs of each metric in each column
    return {column: {metric: _mean_std([metrics[column][metric] for metrics in per_run])
                     for metric in METRIC_NAMES if metric in per_run[0][column]}
            for column in columns}


# The score of a test-time augmented row: "<score>+tta" (its own key: the headline and the oracle never pick it).
TTA_SUFFIX = "+tta"


def _tta_entries(plain: Sequence[Dict], rows: Sequence[Dict], groups: Dict[str, List[str]],
                 columns: Sequence[str]) -> List[Dict]:
    """The logit scores again on test-time augmented logits (the runs' ``tta`` record, issue 30), beside the plain
    entries they mirror: the same runs, another accuracy and other metrics."""
    level = rows[0]["tta"]["level"]
    entries = []
    for base in plain:
        if base["score"] not in rows[0]["tta"]["metrics"]:
            continue
        per_run = [_with_group_means(row["tta"]["metrics"][base["score"]], groups) for row in rows]
        entries.append(dict(base, score=base["score"] + TTA_SUFFIX, tta=level, label=f"{base['label']}, TTA {level}",
                            accuracy=_mean_std([row["tta"]["accuracy"] for row in rows]),
                            metrics=_column_stats(per_run, columns)))
    return entries


# The summary entry of a head read with the score each of its runs chose on validation.
CHOSEN = "chosen"


def _choices_text(rows: Sequence[Dict]) -> str:
    # "knn50 x2, mds" : the validation's choice in each seed, most frequent first
    counts: Dict[str, int] = {}
    for row in rows:
        counts[row["score"]] = counts.get(row["score"], 0) + 1
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _mean_std_text(stat: Dict[str, float], best: bool = False) -> str:
    text = f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"
    return f"**{text}**" if best else text


def _recipe_line(entry: Dict) -> str:
    settings = entry["train"]
    start = ("from scratch" if settings.get("from_scratch") else
             f"from {Path(settings['checkpoint']).name if settings.get('checkpoint') else 'pretrained ' + settings['model']}")
    parts = [settings["model"], start, "frozen backbone" if settings.get("freeze_backbone") else None,
             f"{settings.get('epochs', 5)} epochs", f"batch {settings.get('batch_size', 64)}",
             f"{settings.get('opt', 'sgd')} lr {settings.get('lr', 0.01)}", f"{settings.get('sched', 'cosine')}",
             f"{settings['warmup_epochs']} warm-up epoch(s)" if settings.get("warmup_epochs") else None,
             f"weight decay {settings['weight_decay']}" if "weight_decay" in settings else None,
             f"augmentation {settings.get('augmentation', 'rrc')}",
             "bf16/fp16 autocast" if settings.get("amp") else None,
             "channels_last" if settings.get("channels_last") else None,
             f"{settings['img_size']} px" if settings.get("img_size") else None,
             (f"{'first' if settings.get('subset', 'balanced') == 'first' else 'a class-balanced sample of'} "
              f"{settings['train_limit']} training images") if settings.get("train_limit") else None]
    parts += [f"{_HEAD_LABELS.get(head, head)} with " + ", ".join(f"{key}={value}" for key, value in extra.items())
              for head, extra in entry.get("head_settings", {}).items() if extra]
    return ", ".join(p for p in parts if p)


def _hardware_line(entries: Sequence[Dict]) -> str:
    # where the heads trained: one machine, or each machine with the heads that ran on it
    heads_by_machine: Dict[str, List[str]] = {}
    for entry in entries:
        for machine in entry["hardware"]:
            heads_by_machine.setdefault(machine, []).append(_HEAD_LABELS.get(entry["head"], entry["head"]))
    if len(heads_by_machine) == 1:
        return next(iter(heads_by_machine))
    return "; ".join(f"{machine} ({', '.join(heads)})" for machine, heads in heads_by_machine.items())


def _start_line(entry: Dict) -> str:
    # what a protocol trains, in a few words: "cifar10, cifar_resnet20 fine-tuned from resnet20-12fca82f.th, 4 epochs"
    # (the epochs tell apart two protocols on the same start, e.g. CIFAR-10 from scratch for 2 and 15 epochs)
    settings = entry["train"]
    if settings.get("from_scratch"):
        how = "from scratch"
    else:
        start = Path(settings["checkpoint"]).name if settings.get("checkpoint") else "pretrained"
        how = f"frozen backbone ({start})" if settings.get("freeze_backbone") else f"fine-tuned from {start}"
    return f"{dataset_name(entry['id_dataset'])}, {settings['model']} {how}, {settings.get('epochs', 5)} epochs"


# The other isotropic heads beside IsoMax+ in the README's table, each read with the score it is designed for.
_HEADLINE_COMPANIONS = (("isomax", "entropic"), ("dismax", "mmles"))


def _companion_cells(entry: Optional[Dict], gap: str, column: str, top: float) -> str:
    # accuracy and AUROC of one companion head (bold where it is the row's best), or why they are missing
    if entry is None:
        return f" | {gap} | {gap}"
    auroc = entry["metrics"][column]["auroc"]
    return f" | {_mean_std_text(entry['accuracy'])} | {_mean_std_text(auroc, auroc['mean'] == top)}"


# The heads of the validated headline, SoftMax first: each read with its validation-chosen score.
_VALIDATED_HEADS = ("softmax", "isomaxplus", "isomax", "dismax")


def _columns_of(entry: Dict, every_set: bool) -> List[str]:
    if every_set:
        return entry["columns"]
    return [column for column in entry["columns"] if column.endswith(" mean")] or entry["ood_datasets"]


def validated_headline_table(runs: Sequence[Dict], protocol: Optional[str] = None, every_set: bool = False,
                             oracle: bool = False) -> str:
    """The headline of runs that chose their OOD score on validation (issue 29): per protocol and OOD column, each
    head's accuracy and the test AUROC of the score its runs chose on validation (the choices in brackets), and each
    isotropic head's difference to SoftMax's (mean over the seeds both have). ``oracle``: instead, each head with the
    score that is best on that test column (chosen on the test sets: an oracle no user has, shown for reference)."""
    runs = [run for run in runs if protocol is None or run["protocol"]["name"] == protocol]
    summary = summarize(runs)
    kind = "oracle score (best on this test column)" if oracle else "validation-chosen score"
    titles = "".join(f" | {_HEAD_LABELS[h]} acc | {_HEAD_LABELS[h]} AUROC" + ("" if h == "softmax" else " | - SoftMax")
                     for h in _VALIDATED_HEADS)
    lines = [f"| protocol | seeds | OOD{titles} |", "|---|---|---|" + "---|---|" + "---|---|---|" * (len(_VALIDATED_HEADS) - 1)]
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        entries = [e for e in summary if e["protocol"] == name]
        by_head = {head: [e for e in entries if e["head"] == head] for head in _VALIDATED_HEADS}
        reference = next((e for e in by_head["softmax"] if e["score"] == CHOSEN), None)
        if reference is None:
            continue
        for column in _columns_of(reference, every_set):
            picked = {}
            for head, head_entries in by_head.items():
                if oracle:
                    candidates = [e for e in head_entries if e["score"] != CHOSEN and not e.get("tta")]
                    picked[head] = max(candidates, key=lambda e: e["metrics"][column]["auroc"]["mean"]) if candidates else None
                else:
                    picked[head] = next((e for e in head_entries if e["score"] == CHOSEN), None)
            top = max(e["metrics"][column]["auroc"]["mean"] for e in picked.values() if e is not None)
            base = picked["softmax"]["metrics"][column]["auroc"]["mean"]
            cells = []
            for head, entry in picked.items():
                if entry is None:
                    cells += ["not run", "not run"] + ([] if head == "softmax" else [""])
                    continue
                value = entry["metrics"][column]["auroc"]
                how = entry["label"].split(", ", 1)[1] if oracle else _choices_text_of(entry)
                cells += [_mean_std_text(entry["accuracy"]), f"{_mean_std_text(value, value['mean'] == top)} ({how})"]
                if head != "softmax":
                    cells.append(f"{100 * (value['mean'] - base):+.2f}")
            seeds = len(reference["seeds"])
            lines.append(f"| {_start_line(reference)} | {seeds} | {column} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nAUROC % (ID positive), mean ± std over seeds, each head with its {kind}."


def _choices_text_of(entry: Dict) -> str:
    return entry["label"].split("validation-chosen (", 1)[1].rstrip(")")


def headline_table(runs: Sequence[Dict], protocol: Optional[str] = None, every_set: bool = False) -> str:
    """The README's results table: :func:`validated_headline_table` for runs that chose their score on
    validation, else (runs made before) :func:`test_validated_headline_table`."""
    if runs and all("selection" in row for run in runs for row in run["rows"] if row["head"] != "source"):
        return validated_headline_table(runs, protocol, every_set)
    return test_validated_headline_table(runs, protocol, every_set)


def test_validated_headline_table(runs: Sequence[Dict], protocol: Optional[str] = None, every_set: bool = False) -> str:
    """The README's results table from the runs (:func:`load_runs`): per protocol and OOD column (the group
    means where the protocol has groups, else each OOD set; ``every_set``: each OOD set and the group means),
    SoftMax and IsoMax+ accuracy, the best SoftMax score's AUROC and IsoMax+'s MDS AUROC (mean ± std over the
    seeds that have both heads) and their difference, then IsoMax's accuracy and entropic AUROC and DisMax's
    accuracy and MMLES AUROC where they ran on the same seeds; the best AUROC bold. ``protocol``: that one
    only."""
    runs = [run for run in runs if protocol is None or run["protocol"]["name"] == protocol]
    paired = [run for run in runs if {"softmax", "isomaxplus"} <= {row["head"] for row in run["rows"]}]
    summary = summarize(paired) if paired else []
    companion_titles = "".join(f" | {_HEAD_LABELS[head]} acc | {_HEAD_LABELS[head]} {_SCORE_LABELS[score]} AUROC"
                         for head, score in _HEADLINE_COMPANIONS)
    lines = [f"| protocol | seeds | OOD | SoftMax acc | IsoMax+ acc | best SoftMax AUROC | IsoMax+ MDS AUROC | MDS - best"
             f"{companion_titles} |", "|---|---|---|---|---|---|---|---|" + "---|---|" * len(_HEADLINE_COMPANIONS)]
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        entries = {(e["head"], e["score"]): e for e in summary if e["protocol"] == name}
        softmax = [e for (head, _), e in entries.items() if head == "softmax" and not e.get("tta")]
        mds = entries.get(("isomaxplus", "mds"))
        if not softmax or mds is None:
            continue
        if every_set:
            columns = mds["columns"]
        else:  # the group means, or each set where the protocol has no groups
            columns = [column for column in mds["columns"] if column.endswith(" mean")] or mds["ood_datasets"]
        seeds = len(set(softmax[0]["seeds"]) & set(mds["seeds"]))
        # (entry, why it is missing): a head on other seeds than the two compared is left out, its seed count
        # shown, not mixed in
        companions = []
        for entry in (entries.get(pair) for pair in _HEADLINE_COMPANIONS):
            if entry is None:
                companions.append((None, "not run"))
            elif set(entry["seeds"]) != set(mds["seeds"]):
                companions.append((None, f"{len(set(entry['seeds']) & set(mds['seeds']))} of {seeds} seeds"))
            else:
                companions.append((entry, ""))
        for column in columns:
            best = max(softmax, key=lambda e: e["metrics"][column]["auroc"]["mean"])
            ours, theirs = mds["metrics"][column]["auroc"], best["metrics"][column]["auroc"]
            top = max([ours["mean"], theirs["mean"]]
                      + [e["metrics"][column]["auroc"]["mean"] for e, _ in companions if e is not None])
            cells = "".join(_companion_cells(e, gap, column, top) for e, gap in companions)
            lines.append(f"| {_start_line(mds)} | {seeds} | {column} | {_mean_std_text(softmax[0]['accuracy'])} | "
                         f"{_mean_std_text(mds['accuracy'])} | {_mean_std_text(theirs, theirs['mean'] == top)} "
                         f"({_SCORE_LABELS[best['score']]}) | {_mean_std_text(ours, ours['mean'] == top)} | "
                         f"{100 * (ours['mean'] - theirs['mean']):+.2f}{cells} |")
    return "\n".join(lines)


def markdown_table(summary: Sequence[Dict], metrics: Sequence[str] = ("auroc",),
                   protocol: Optional[str] = None) -> str:
    """A Markdown table per protocol: ID accuracy, the chosen metrics per OOD set and group mean, and the
    throughput ratio, mean ± std over seeds in %; the best mean per column is bold."""
    blocks = []
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        if protocol is not None and name != protocol:
            continue
        entries = [entry for entry in summary if entry["protocol"] == name]
        columns = [(ood, metric) for ood in entries[0]["columns"] for metric in metrics]
        header = (["model, score", "ID acc %"] + [f"{METRIC_TITLES[m]} {ood} %" for ood, m in columns]
                  + ["inference img/s (x SoftMax)"])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best_accuracy = max(e["accuracy"]["mean"] for e in entries)
        pick = {m: (min if m in _LOWER_IS_BETTER else max) for _, m in columns}
        best = {(ood, m): pick[m](e["metrics"][ood][m]["mean"] for e in entries) for ood, m in columns}
        for entry in entries:
            ratio = entry["throughput_ratio"]
            cells = [entry["label"], _mean_std_text(entry["accuracy"], entry["accuracy"]["mean"] == best_accuracy)]
            cells += [_mean_std_text(entry["metrics"][ood][m], entry["metrics"][ood][m]["mean"] == best[(ood, m)])
                      for ood, m in columns]
            cells.append(f"{entry['throughput']['mean']:.0f} ({ratio['mean']:.2f}x)" if ratio else "")
            lines.append("| " + " | ".join(cells) + " |")
        first = entries[0]
        seeds = sorted({seed for e in entries for seed in e["seeds"]})
        per_head = {e["head"]: e for e in entries}.values()  # one entry per head
        seconds, wall = sum(e["seconds"] for e in per_head), sum(e.get("wall_seconds", 0.0) for e in per_head)
        lines.append(f"\n{name}: ID {dataset_name(first['id_dataset'])}; {_recipe_line(first)}; seeds {', '.join(map(str, seeds))}; "
                     f"{_hardware_line(per_head)}; {seconds / 60:.0f} min of training epochs, {wall / 60:.0f} min of runs "
                     f"(start model, features, evaluation included) in all.")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def result_tables(runs: Sequence[Dict]) -> Dict[str, str]:
    """The tables a document may quote, by name, made from the runs (:func:`load_runs`): ``"headline"``
    (:func:`headline_table`) and, per protocol, its AUROC table with its recipe line (:func:`markdown_table`)
    and ``"<protocol>.per_set"``, its headline rows for each OOD set and group mean."""
    summary = summarize(runs)
    tables = {"headline": headline_table(runs)}
    validated = all("selection" in row for run in runs for row in run["rows"] if row["head"] != "source")
    if validated:
        tables["headline.oracle"] = validated_headline_table(runs, oracle=True)
    for name in dict.fromkeys(entry["protocol"] for entry in summary):
        tables[name] = markdown_table(summary, protocol=name)
        tables[f"{name}.per_set"] = headline_table(runs, protocol=name, every_set=True)
        if validated:
            tables[f"{name}.oracle"] = validated_headline_table(runs, protocol=name, every_set=True, oracle=True)
    return tables


# A quoted table in a Markdown document: "<!-- results: NAME -->", the table, "<!-- results: end -->".
_QUOTED_TABLE = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<table>.*?)(<!-- results: end -->)", re.S)


def fill_result_tables(text: str, tables: Mapping[str, str], where: str = "the document") -> str:
    """``text`` with every quoted table replaced by ``tables[name]``, so that a document's numbers can only
    come from the runs (``scripts/sync_docs.py`` writes them, a test checks them).

    Example:
        >>> fill_result_tables(readme, result_tables(load_runs("benchmarks/results")))
    """
    unknown = sorted({m["name"] for m in _QUOTED_TABLE.finditer(text)} - set(tables))
    if unknown:
        raise ValueError(f"{where} quotes {', '.join(unknown)}, which the runs have no table for; "
                         f"the names are 'headline' and the protocols with runs ({', '.join(sorted(tables))}).")
    if text.count("<!-- results: ") != 2 * len(_QUOTED_TABLE.findall(text)):
        raise ValueError(f"{where} has a '<!-- results: NAME -->' marker without its '<!-- results: end -->'.")
    return _QUOTED_TABLE.sub(lambda m: f"{m[1]}{tables[m['name']].strip()}\n{m[4]}", text)
