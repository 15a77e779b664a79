"""Fuzzing (hypothesis) of the parsers of untrusted input: hub configs, a saved model's config.json, a
fine-tuning run's checkpoint (the resume path) and datasets.

Contract for every generated case: it works correctly, or it raises ValueError / FileNotFoundError whose
message is one line. A saved model that loads must give the saved model's logits (its head is never
silently re-initialised).

Cases run (hypothesis examples, counted by ``CASES`` in one run of this file; printed with ``-s``):
    hub config (load_hub_config / _validate):         600  (3 tests x 200)
    model folder config.json (timm_isomax.create_model
        and timm.create_model "local-dir:"):           456  (3 tests, about 150 each)
    resume checkpoint (finetune._read_resume_state):   150
    datasets (find_columns, select_classes,
        check_labels, load_image_dataset):             400  (2 tests x 200)
    total:                                            1606
"""
import collections
import copy
import json
import os
import tempfile
from pathlib import Path

import datasets
import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import timm_isomax
from timm_isomax import data as tdata
from timm_isomax.train.state import read_resume_state as _read_resume_state
from timm_isomax.hub import CONFIG_NAME, WEIGHTS_NAME, save_pretrained
from timm_isomax.hub_config import load_hub_config, packaged_hub_configs

CASES = collections.Counter()
ALLOWED = (ValueError, FileNotFoundError)
# exception types that come from deep inside (the contract forbids them), json's included
FORBIDDEN = (KeyError, TypeError, AttributeError, IndexError, json.JSONDecodeError, UnicodeDecodeError)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_LOADS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
# values meant to break a field: wrong types, huge and negative numbers, unknown names, empty containers
hostile = json_values | st.sampled_from([0, -1, 10**12, 2**63, 1e308, "", "resnet5O_isomaxplus", "resnet10t", [], {}])


def call_within_contract(load):
    """Run ``load()``; return its result, or None if it raised an allowed one-line error."""
    try:
        return load()
    except FORBIDDEN as error:  # JSONDecodeError is a ValueError: checked before ALLOWED
        pytest.fail(f"{type(error).__name__} from deep inside: {error}")
    except ALLOWED as error:
        assert "\n" not in str(error), f"multi-line message: {error!r}"
        assert str(error), "empty error message"
        return None


@pytest.fixture(scope="module", autouse=True)
def report_case_counts():
    yield
    print("\nfuzz cases:", dict(CASES), "total", sum(CASES.values()))


# --- hub configs ----------------------------------------------------------------------------------
BASE_HUB_CONFIG = packaged_hub_configs()[0].to_json()


def _load_hub_text(text: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_bytes(text)
        return call_within_contract(lambda: load_hub_config(path))


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_hub_config_survives_arbitrary_bytes(text):
    CASES["hub config"] += 1
    _load_hub_text(text)


@FUZZ
@given(field=st.sampled_from(sorted(BASE_HUB_CONFIG)), value=hostile)
def test_hub_config_rejects_wrong_field_values_in_one_line(field, value):
    CASES["hub config"] += 1
    config = _load_hub_text(json.dumps({**BASE_HUB_CONFIG, field: value}).encode())
    if config is not None:  # accepted: the field is one that takes this value
        assert getattr(config, field) == (value if field != "evaluation" else value or {})


@FUZZ
@given(missing=st.sets(st.sampled_from(sorted(BASE_HUB_CONFIG))), labels=st.lists(st.text(max_size=3), max_size=12),
       extra=st.dictionaries(st.text(min_size=1, max_size=6), json_scalars, max_size=2))
def test_hub_config_missing_unknown_fields_and_label_names(missing, labels, extra):
    CASES["hub config"] += 1
    data = {k: v for k, v in BASE_HUB_CONFIG.items() if k not in missing}
    data.update(label_names=labels, **extra)
    config = _load_hub_text(json.dumps(data).encode())
    if config is not None:
        assert config.label_names == labels and not (set(extra) - set(BASE_HUB_CONFIG))


# --- a saved model's config.json ------------------------------------------------------------------
IMAGES = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t_isomaxplus", num_classes=3, in_chans=1).eval()
    with torch.no_grad():  # not the initial values, so a re-initialised head shows
        model.head.distance_scale.fill_(3.0)
        model.head.prototypes.mul_(2.0)
    folder = save_pretrained(model, tmp_path_factory.mktemp("saved"), label_names=["a", "b", "c"])
    config = json.loads((folder / CONFIG_NAME).read_text())
    with torch.no_grad():
        logits = model(IMAGES)
    return folder, config, logits


def _paths(config):
    """Every (path of keys) to a value inside the saved config, for targeted mutation."""
    if isinstance(config, dict):
        yield ()
        for key, value in config.items():
            for rest in _paths(value):
                yield (key, *rest)
    else:
        yield ()


def _parent(config, path):
    """A deep copy of ``config`` and the container in it that holds ``path``'s last key."""
    config = copy.deepcopy(config)
    node = config
    for key in path[:-1]:
        node = node[key]
    return config, node


def _set(config, path, value):
    if not path:
        return value
    config, node = _parent(config, path)
    node[path[-1]] = value
    return config


def _delete(config, path):
    if not path:
        return config
    config, node = _parent(config, path)
    del node[path[-1]]
    return config


ISOMAX_ARCHS = set(timm_isomax.list_isomax_models())


def _timm_can_parse(config) -> bool:
    """Whether timm's own config.json parser accepts ``config``: on the timm.create_model path it runs before any
    timm-isomax code (its KeyError/TypeError are timm's); timm_isomax.create_model validates the file first."""
    from timm.models._hub import _parse_model_cfg

    try:
        _, architecture, _ = _parse_model_cfg(copy.deepcopy(config), {})
        # only IsoMax architectures reach timm-isomax code; timm builds (and fails on) any other itself
        return isinstance(architecture, str) and architecture in ISOMAX_ARCHS
    except Exception:
        return False


def _check_loads(saved_model, text: bytes, config):
    """Load the mutated folder through both public paths; a loaded model must give the saved logits."""
    folder, _, logits = saved_model
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(folder / WEIGHTS_NAME, Path(tmp) / WEIGHTS_NAME)
        (Path(tmp) / CONFIG_NAME).write_bytes(text)
        loaders = [lambda: timm_isomax.create_model(f"local-dir:{tmp}", pretrained=True)]
        if _timm_can_parse(config):
            loaders.append(lambda: timm.create_model(f"local-dir:{tmp}", pretrained=True))
        for load in loaders:
            model = call_within_contract(load)
            if model is not None:
                with torch.no_grad():
                    torch.testing.assert_close(model.eval()(IMAGES), logits, rtol=0, atol=0)


@FUZZ_LOADS
@given(data=st.data())
def test_model_config_field_mutations_load_exactly_or_fail_in_one_line(saved_model, data):
    CASES["model config.json"] += 1
    config = saved_model[1]
    path = data.draw(st.sampled_from(list(_paths(config))), label="path")
    mutated = data.draw(st.one_of(hostile.map(lambda v: _set(config, path, v)), st.just(_delete(config, path))),
                        label="config")
    _check_loads(saved_model, json.dumps(mutated).encode(), mutated)


@FUZZ_LOADS
@given(num_classes=st.sampled_from([1, 2, 3, 4, 10**9, -3, 0, "3", 3.0, True, None]),
       args_num_classes=st.sampled_from([1, 3, 5, 10**12, -1, "x", None]),
       in_chans=st.sampled_from([1, 3, 0, 10**9, "1", None]),
       ood_config=st.one_of(hostile, st.fixed_dictionaries({}, optional={
           "score": st.sampled_from(["mds", "msp", "nope", 3]), "threshold": hostile, "tpr": hostile,
           "fitted_on": hostile, "bogus": json_scalars})),
       extra_args=st.dictionaries(st.sampled_from(["drop_rate", "foo", "stem_width", "global_pool", "bar"]), hostile, max_size=2))
def test_model_config_class_counts_channels_and_model_args(saved_model, num_classes, args_num_classes, in_chans,
                                                           ood_config, extra_args):
    CASES["model config.json"] += 1
    config = copy.deepcopy(saved_model[1])
    config["num_classes"] = num_classes
    config["model_args"].update(num_classes=args_num_classes, in_chans=in_chans, ood_config=ood_config, **extra_args)
    config["model_args"] = {k: v for k, v in config["model_args"].items() if v is not None}
    _check_loads(saved_model, json.dumps(config).encode(), config)


@FUZZ_LOADS
@given(cut=st.integers(0, 2000), junk=st.binary(max_size=8), as_non_dict=hostile)
def test_model_config_truncated_invalid_utf8_and_non_object(saved_model, cut, junk, as_non_dict):
    CASES["model config.json"] += 1
    text = json.dumps(saved_model[1]).encode()
    for damaged in (text[:cut], text[:cut] + b"\xff\xfe" + junk, json.dumps(as_non_dict).encode()):
        _check_loads(saved_model, damaged, None)


# --- the resume path: a run's checkpoint ----------------------------------------------------------
GOOD_STATE = dict(model={}, optimizer={}, scheduler={}, scaler={}, epoch=1, global_step=10,
                  architecture="resnet10t_isomaxplus", pretrained_cfg={}, log=[{"epoch": 1, "train_loss": 0.5}])


@FUZZ_LOADS
@given(key=st.sampled_from(sorted(GOOD_STATE)), value=hostile, drop=st.booleans(), cut=st.integers(0, 400))
def test_resume_checkpoint_entries_are_checked_before_use(key, value, drop, cut):
    CASES["resume checkpoint"] += 1
    state = {k: v for k, v in GOOD_STATE.items() if not (drop and k == key)}
    if not drop:
        state[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        torch.save(state, path)
        loaded = call_within_contract(lambda: _read_resume_state(path))
        if loaded is not None:
            assert loaded == state
        path.write_bytes(path.read_bytes()[:cut])  # a damaged file
        assert call_within_contract(lambda: _read_resume_state(path)) is None


# --- datasets -------------------------------------------------------------------------------------
COLUMN_VALUES = {
    "label ints": st.lists(st.integers(-5, 20), min_size=0, max_size=6),
    "strings": st.lists(st.text(max_size=3), min_size=0, max_size=6),
    "floats": st.lists(st.floats(allow_nan=False), min_size=0, max_size=6),
    "optional ints": st.lists(st.none() | st.integers(-2, 5), min_size=0, max_size=6),
}


@st.composite
def generated_datasets(draw):
    """A datasets.Dataset with random columns and types (all columns of one length)."""
    names = draw(st.lists(st.sampled_from(["image", "label", "labels", "img", "y", "x"]), unique=True, max_size=4))
    rows = draw(st.integers(0, 5))
    columns = {}
    for name in names:
        kind = draw(st.sampled_from(sorted(COLUMN_VALUES)))
        values = draw(COLUMN_VALUES[kind])
        columns[name] = (values * (rows + 1))[:rows] if values else [None] * rows
    return datasets.Dataset.from_dict(columns) if columns else datasets.Dataset.from_dict({"x": [0] * rows})


@FUZZ
@given(dataset=generated_datasets(), image_column=st.sampled_from([None, "image", "img", "nope"]),
       label_column=st.sampled_from([None, "label", "labels", "y", "nope"]),
       classes=st.lists(st.integers(-2, 5), max_size=3) | st.just("ab") | st.just([1.5]),
       num_classes=st.integers(1, 6))
def test_dataset_columns_labels_and_class_selection(dataset, image_column, label_column, classes, num_classes):
    CASES["datasets"] += 1
    call_within_contract(lambda: tdata.find_columns(dataset, image_column, label_column))
    selected = call_within_contract(lambda: tdata.select_classes(dataset, classes, label_column or "label"))
    if selected is not None:
        assert set(selected[label_column or "label"]) <= set(classes)
    # check_labels returns None when it accepts: a marker tells acceptance from a refused (one-line) error
    accepted = call_within_contract(lambda: tdata.check_labels(dataset, label_column or "label", num_classes) or "accepted")
    if accepted is None:
        return
    # accepted: every label is a class index
    assert all(y is not None and 0 <= y < num_classes for y in dataset[label_column or "label"])


@FUZZ
@given(dataset=generated_datasets(), split=st.sampled_from(["train", "test", "nope", None]),
       layout=st.sampled_from(["parquet file", "parquet folder", "save_to_disk"]))
def test_load_image_dataset_of_generated_files(dataset, split, layout):
    CASES["datasets"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        if layout == "parquet file":
            source = Path(tmp) / "train.parquet"
            dataset.to_parquet(str(source))
        elif layout == "parquet folder":
            source = Path(tmp)
            dataset.to_parquet(str(source / "train.parquet"))
        else:
            source = Path(tmp) / "saved"
            datasets.DatasetDict(train=dataset).save_to_disk(str(source))
        loaded = call_within_contract(lambda: tdata.load_image_dataset(str(source), split=split,
                                                                       cache_dir=str(Path(tmp) / "cache")))
        if loaded is not None and split is not None:
            assert split == "train" and len(loaded) == len(dataset)
