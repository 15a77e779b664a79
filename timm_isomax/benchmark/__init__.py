"""SoftMax vs IsoMax vs IsoMax+ vs DisMax trained alike by the product's own trainer, over several seeds.

A protocol is data: one JSON file per protocol (``benchmarks/protocols/<name>.json``) names the ID and OOD
datasets (folders under a data root), optional OOD groups (OpenOOD's ``near`` / ``far``), the heads, the
seeds, and under ``train`` the :class:`~timm_isomax.train.TrainConfig` settings every head shares (start
model, checkpoint, recipe, preprocessing); ``head_settings`` adds settings that exist for one head only (e.g.
``{"dismax": {"dismax_fpr": true}}``: DisMax with its fractional probability regularisation, as in its paper);
``smoke`` overrides shrink it to seconds for the test suite::

    {"name": "mnist", "id_dataset": "mnist", "ood_datasets": ["fashion_mnist", "notmnist"],
     "heads": ["softmax", "isomax", "isomaxplus"], "seeds": [0, 1, 2],
     "train": {"model": "resnet10t", "from_scratch": true, "in_chans": 1, "img_size": 32, "train_limit": 20000,
               "epochs": 3, "batch_size": 64, "lr": 0.05},
     "smoke": {"train": {"train_limit": 1000, "val_limit": 500, "epochs": 1}}}

Each (seed, head) is one run of :func:`timm_isomax.train.train` into ``<runs>/<protocol>/seed<k>/<head>``:
it checkpoints as any run does, so an interrupted benchmark resumes in the middle of a run, with the same
command. Validation is held out of the training split; the run's final evaluation chooses its OOD score on it
against the OOD validation sets (jigsaw puzzles of the validation images, and the protocol's
``ood_val_datasets``), never on the test sets (:mod:`timm_isomax.train.final`). When a run ends, its final
evaluation (accuracy on the ID test split; every score of its head on every OOD test set, all metrics; the
chosen score and the validation AUROCs behind it) joins ``<results>/<protocol>/seed<k>.json``, written at once; when every head of a seed is done,
their inference throughput is timed side by side. :func:`summarize` gives mean and standard deviation
over seeds, also of the near / far means; :func:`markdown_table` renders them.

Modules: :mod:`.protocol` (the JSON definition), :mod:`.runner` (the runs), :mod:`.report` (statistics and
tables), :mod:`.timing` (side-by-side timing).

Example:
    >>> protocol = load_protocol("benchmarks/protocols/mnist.json")
    >>> runs = run_protocol(protocol, data_root="../shared/data", output="benchmarks/results")
    >>> print(markdown_table(summarize(runs)))
"""
from .._lazy import lazy_exports

# public name -> the module of this package that defines it, imported when the name is first read
_EXPORTS = {
    "BenchmarkProtocol": "protocol", "load_protocol": "protocol", "smoke_version": "protocol",
    "train_config": "protocol", "heads_problem": "protocol", "missing_inputs": "protocol",
    "run_protocol": "runner", "load_runs": "runner", "result_row": "runner", "measure_throughput": "runner",
    "summarize": "report", "summary_json": "report", "markdown_table": "report", "headline_table": "report",
    "validated_headline_table": "report", "test_validated_headline_table": "report", "CHOSEN": "report", "TTA_SUFFIX": "report",
    "result_tables": "report", "fill_result_tables": "report", "SCORE_LABELS": "report", "TABLE_METRICS": "report",
    "inference_throughput": "timing", "hardware_description": "timing", "interleaved_medians": "timing",
    "time_call": "timing",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
