"""After a wheel install, a fresh interpreter that only does `import timm` knows the IsoMax models: run
from a clean venv outside the repo, in processes that never import timm_isomax themselves."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchmark_startup import clean_venv_with_wheel  # noqa: E402


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory):
    return clean_venv_with_wheel(tmp_path_factory.mktemp("wheel_venv"))


def _run(python, code, cwd, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TIMM_ISOMAX_NO_AUTOLOAD"}
    environment.update(env)
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=cwd, env=environment)


@pytest.mark.slow
def test_import_timm_alone_registers_the_isomax_models(wheel_python, tmp_path):
    result = _run(wheel_python, "import json, sys, timm\n"
                  "m = timm.create_model('resnet10t_isomaxplus', num_classes=3)\n"
                  "iso = timm.create_model('convnext_atto_isomax', num_classes=4)\n"
                  "print(json.dumps([type(m).__name__, m.head_type, iso.head_type, sys.modules['timm_isomax'].__file__,"
                  " len(timm.list_models('*_isomaxplus')), timm.list_models('resnet10t_isomaxplus.mnist', include_tags=True)]))",
                  tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    name, head, other, where, count, tags = json.loads(result.stdout.splitlines()[-1])
    assert (name, head, other) == ("IsoMaxClassifier", "isomaxplus", "isomax") and count >= 1364
    assert tags == ["resnet10t_isomaxplus.mnist"]  # the hub configs ship in the wheel and register their tags
    assert str(wheel_python.parents[1]) in where  # the wheel's copy, not the checkout's


@pytest.mark.slow
def test_start_up_imports_nothing_heavy_and_the_switch_turns_it_off(wheel_python, tmp_path):
    bare = _run(wheel_python, "import sys; print(sorted(m for m in ('torch', 'timm', 'timm_isomax', 'numpy') "
                              "if m in sys.modules))", tmp_path)
    assert bare.returncode == 0 and bare.stdout.strip() == "[]", bare.stderr[-2000:]
    off = _run(wheel_python, "import timm; timm.create_model('resnet10t_isomaxplus')", tmp_path,
               TIMM_ISOMAX_NO_AUTOLOAD="1")
    assert off.returncode != 0 and "Unknown model" in off.stderr


@pytest.mark.slow
def test_a_saved_isomax_folder_loads_with_timm_alone(wheel_python, tmp_path):
    import timm
    import torch

    import timm_isomax  # noqa: F401  (this process saves the folder; the checked one never imports it)
    from timm_isomax.hub import save_pretrained

    torch.manual_seed(0)
    model = timm.create_model("resnet10t_isomaxplus", num_classes=5).eval()
    folder = save_pretrained(model, tmp_path / "folder")
    x = torch.randn(2, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "expected.pt")
    result = _run(wheel_python, f"import timm, torch\n"
                  f"m = timm.create_model('local-dir:{folder}', pretrained=True).eval()\n"
                  f"x, expected = torch.load('{tmp_path}/x.pt'), torch.load('{tmp_path}/expected.pt')\n"
                  f"with torch.no_grad():\n    assert torch.equal(m(x), expected)\n"
                  f"print(type(m).__name__)", tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "IsoMaxClassifier", result.stderr[-2000:]


@pytest.mark.slow
def test_the_wheel_installs_the_timm_isomax_command(wheel_python, tmp_path):
    command = wheel_python.parent / "timm-isomax"
    usage = subprocess.run([str(command)], capture_output=True, text=True, cwd=tmp_path)
    assert usage.returncode == 2 and "finetune" in usage.stdout and "benchmark" in usage.stdout
    helped = subprocess.run([str(command), "finetune", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "usage: timm-isomax finetune" in helped.stdout


@pytest.mark.slow
def test_the_wheel_holds_every_module_of_the_checkout_and_each_imports(wheel_python, tmp_path):
    """The wheel's package list is found, not written by hand: a subpackage the checkout has and the wheel lacks
    would pass every editable-install test and break every user's install."""
    checkout = Path(__file__).resolve().parents[1] / "timm_isomax"
    expected = sorted(".".join(("timm_isomax", *p.relative_to(checkout).with_suffix("").parts)).removesuffix(".__init__")
                      for p in checkout.rglob("*.py"))
    result = _run(wheel_python, "import importlib, json, pkgutil, timm_isomax\n"
                  "names = ['timm_isomax'] + [m.name for m in pkgutil.walk_packages(timm_isomax.__path__, 'timm_isomax.')]\n"
                  "for name in names:\n    if not name.endswith('__main__'):  # that one runs the command line\n"
                  "        importlib.import_module(name)\n"
                  "print(json.dumps(sorted(names)))", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    in_wheel = json.loads(result.stdout.splitlines()[-1])
    assert {"timm_isomax.layers", "timm_isomax.models", "timm_isomax.ood", "timm_isomax.data", "timm_isomax.hub",
            "timm_isomax.train", "timm_isomax.benchmark", "timm_isomax.cli"} <= set(in_wheel)
    assert sorted(set(in_wheel) - {"timm_isomax.hub_configs", "timm_isomax.protocols"}) == expected
