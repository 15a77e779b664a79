"""The Hub, spoken for real: `timm-isomax push` and timm's `hf-hub:` downloads over HTTP, through
huggingface_hub's own client, against the Hub-protocol server of tests/hub_server.py on 127.0.0.1 (no other
network). Nothing in timm_isomax, timm or huggingface_hub is replaced; HF_ENDPOINT points the client at the
server. Bad input: unreachable, 401/403/404/409/412/5xx, a repo holding other files, dropped connections."""
import dataclasses
import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi, constants

import timm_isomax
from timm_isomax.cli import push as push_cli
from timm_isomax.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, push_to_hub
from timm_isomax.hub_config import load_hub_config, write_hub_config
from timm_isomax.provenance import weights_sha256

from .hub_server import GITATTRIBUTES, WRITE_TOKEN, hub_fixture  # noqa: F401 (the `hub` fixture)
from .hub_models import ARCH, other_folder, saved_model, swapped_weights_file, measured_hub_config

REPO = "test-org/resnet10t_isomaxplus.test"  # measured_hub_config's repo_id
# huggingface_hub 2.4's own LFS upload (lfs.py, _upload_single_part) passes the file as data=, which httpx2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def trained(tmp_path):
    """A small model folder and its measured hub config (tests/test_hub.py's), ready to push."""
    model = saved_model(tmp_path / "model")
    return model, tmp_path / "model", measured_hub_config(tmp_path / "model", tmp_path)


def _cli(config_path: Path, tmp_path: Path, capsys, *extra: str, token: str = WRITE_TOKEN):
    token_file = tmp_path / "token"
    token_file.write_text(token)
    code = push_cli.main([str(config_path), "--token-file", str(token_file), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the round trip -----------------------------------------------------------------------------------
_CHECKS = '''

# --- appended by the test: the loads the round trip checks ----------------------------------------------
import json, sys
import torch
from timm_isomax.hub_config import load_hub_config

images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
first, published, out = sys.argv[1], sys.argv[2], sys.argv[3]
with torch.no_grad():
    logits = {{"latest": model(images)}}  # `model`: the card's snippet above built it
    name = timm_isomax.register_hub_config(load_hub_config(published))  # a published tag (pinned commit)
    tagged = timm.create_model(name, pretrained=True).eval()
    logits["tagged"] = tagged(images)
    pinned = timm.create_model("hf-hub:{repo}@" + first, pretrained=True, cache_dir="pinned_cache").eval()
    logits["pinned"] = pinned(images)
torch.save(logits, out)
print("TAGGED", name, tagged.pretrained_cfg["hf_hub_id"])
'''


def test_push_then_load_in_a_fresh_process_pinned_tagged_and_offline(hub, trained, tmp_path, capsys, images):
    model, folder, config = trained
    code, out, err = _cli(config.path, tmp_path, capsys)
    assert code == 0, err
    first = load_hub_config(config.path).published["revision"]
    assert first == hub.repos[REPO].head.oid and f"at commit {first}" in out and f"hf-hub:{REPO}" in out

    # the repo: the three files, the weights as LFS (through the storage host, checked by SHA-256)
    files = hub.files(REPO)
    assert sorted(files) == sorted([".gitattributes", CONFIG_NAME, WEIGHTS_NAME, CARD_NAME])
    siblings = {s.rfilename: s for s in HfApi().model_info(REPO, files_metadata=True).siblings}
    assert siblings[WEIGHTS_NAME].lfs.sha256 == hashlib.sha256(files[WEIGHTS_NAME]).hexdigest()
    assert siblings[CONFIG_NAME].lfs is None and siblings[CARD_NAME].lfs is None
    assert json.loads(files[CONFIG_NAME])["architecture"] == ARCH
    assert weights_sha256(folder / WEIGHTS_NAME) == config.metrics["weights_sha256"]
    # the token went to the Hub only: never to the storage host, never into a file or the output
    storage = [r for r in hub.requests if r[0] == "storage"]
    assert any(r[1] == "PUT" for r in storage) and not any("authorization" in r[3] for r in storage)
    assert all(r[3].get("authorization") == f"Bearer {WRITE_TOKEN}" for r in hub.requests if r[:2] == ("hub", "POST"))
    assert all(WRITE_TOKEN.encode() not in content for content in files.values()) and WRITE_TOKEN not in out + err

    # a second push of the same model: nothing new; of other weights: refused, until --force
    assert _cli(config.path, tmp_path, capsys)[0] == 0 and hub.repos[REPO].head.oid == first
    other = saved_model(tmp_path / "other", seed=1)
    other_config = measured_hub_config(tmp_path / "other", tmp_path / "other")
    code, out, err = _cli(other_config.path, tmp_path, capsys)
    assert code == 2 and "--force" in _one_line_error(err) and "other versions of" in err
    assert hub.repos[REPO].head.oid == first and load_hub_config(other_config.path).published is None
    assert _cli(other_config.path, tmp_path, capsys, "--force")[0] == 0
    second = load_hub_config(other_config.path).published["revision"]
    assert second != first == load_hub_config(config.path).published["revision"]

    # a fresh process, empty HF cache: the card's usage snippet exactly as printed, then a published tag
    # (pinned to the first commit) and a pinned revision, all through the server
    snippet = re.search(r"```python\n(.*?)```", hub.files(REPO)[CARD_NAME].decode(), re.S).group(1)
    work = tmp_path / "fresh"
    work.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(work / "example.png")  # the file the snippet opens
    (work / "run.py").write_text(snippet + _CHECKS.format(repo=REPO))
    assert not hub.cache.exists()
    result = subprocess.run([sys.executable, "run.py", first, str(config.path), "logits.pt"], cwd=work,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.splitlines()
    label, score, is_ood = printed[0].split()  # the snippet's own line: label, OOD score, OOD flag
    assert label in config.label_names and float(score) <= 0 and is_ood in ("True", "False")
    assert printed[1] == f"TAGGED {ARCH}.test {REPO}@{first}"
    logits = torch.load(work / "logits.pt")
    with torch.no_grad():
        torch.testing.assert_close(logits["latest"], other.eval()(images), rtol=0, atol=0)
        for key in ("tagged", "pinned"):
            torch.testing.assert_close(logits[key], model.eval()(images), rtol=0, atol=0)
    resolved = [r[2] for r in hub.requests if r[1] == "HEAD" and r[2].endswith(f"/{WEIGHTS_NAME}")]
    assert f"/{REPO}/resolve/main/{WEIGHTS_NAME}" in resolved
    assert resolved.count(f"/{REPO}/resolve/{first}/{WEIGHTS_NAME}") == 2  # the tag, then the pinned load

    # offline: the server gone, HF_HUB_OFFLINE on, the cache that fresh process filled
    hub.stop()
    constants.HF_HUB_OFFLINE = True  # the fixture's monkeypatch restores it
    with torch.no_grad():
        cached = timm.create_model(f"hf-hub:{REPO}", pretrained=True).eval()
        torch.testing.assert_close(cached(images), other(images), rtol=0, atol=0)
        pinned = timm.create_model(f"hf-hub:{REPO}@{first}", pretrained=True, cache_dir=work / "pinned_cache").eval()
        torch.testing.assert_close(pinned(images), model(images), rtol=0, atol=0)
        tagged = timm.create_model(timm_isomax.register_hub_config(load_hub_config(config.path)), pretrained=True).eval()
        torch.testing.assert_close(tagged(images), model(images), rtol=0, atol=0)


# --- push: refused before contacting the Hub ----------------------------------------------------------
def test_a_push_takes_the_tested_lfs_path_where_hf_xet_is_installed(hub, trained, monkeypatch):
    # a plain `pip install` brings hf-xet, and huggingface_hub then uploads through Xet unless told otherwise;
    # push chooses LFS itself, so the default settings take the path this server (and the Hub) speaks
    pytest.importorskip("hf_xet")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)  # the default: no HF_HUB_DISABLE_XET
    _, folder, config = trained
    push_to_hub(folder, config, token=WRITE_TOKEN)
    assert hub.files(REPO)[WEIGHTS_NAME] == (folder / WEIGHTS_NAME).read_bytes()
    assert any(r[:2] == ("storage", "PUT") for r in hub.requests)  # the weights went up by LFS
    assert constants.HF_HUB_DISABLE_XET is False  # the setting is restored


def test_a_push_under_a_shipped_configs_tag_loads_from_the_hub(hub, tmp_path, images):
    # a reproduction of resnet10t_isomaxplus.mnist pushed to one's own repo: its pushed config carries the
    # shipped config's tag, which has no published weights of its own; the repo's weights load
    model = saved_model(tmp_path / "model", tag="mnist")
    config = dataclasses.replace(measured_hub_config(tmp_path / "model", tmp_path), tag="mnist")
    push_to_hub(tmp_path / "model", config, token=WRITE_TOKEN)
    loaded = timm.create_model(f"hf-hub:{REPO}", pretrained=True).eval()  # was: "has no published weights yet"
    assert loaded.pretrained_cfg["tag"] == "mnist"
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_a_folder_that_is_not_the_measured_model_never_reaches_the_server(hub, trained, tmp_path):
    model, folder, config = trained
    swapped = other_folder((model, folder), tmp_path, "swapped", swapped_weights_file)
    for force in (False, True):
        with pytest.raises(ValueError, match="^refusing to publish: .*not the file its config.json was saved with"):
            push_to_hub(swapped, config, token=WRITE_TOKEN, force=force)
    assert hub.requests == [] and load_hub_config(config.path).published is None


def test_a_dry_run_writes_what_would_be_pushed_and_contacts_nobody(hub, trained, tmp_path, capsys):
    _, folder, config = trained
    code, out, err = _cli(config.path, tmp_path, capsys, "--dry-run", str(tmp_path / "dry"))
    assert code == 0 and "nothing uploaded" in out and hub.requests == []
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == sorted([CARD_NAME, CONFIG_NAME, WEIGHTS_NAME])
    assert all(WRITE_TOKEN.encode() not in p.read_bytes() for p in (tmp_path / "dry").iterdir())
    assert WRITE_TOKEN not in out + err and load_hub_config(config.path).published is None


# --- push: the Hub says no, or goes away ----------------------------------------------------------
def test_pushing_under_an_organisation_we_do_not_own_fails_in_one_line(hub, trained, tmp_path, capsys):
    _, _, config = trained
    theirs = write_hub_config(dataclasses.replace(config, repo_id="other-org/resnet10t_isomaxplus.test"),
                              tmp_path / "theirs.json")
    before = theirs.read_bytes()
    code, out, err = _cli(theirs, tmp_path, capsys)
    line = _one_line_error(err)
    assert code == 2 and "403" in line and "other-org" in line and "namespace your token may write to" in line
    assert "other-org/resnet10t_isomaxplus.test" not in hub.repos and theirs.read_bytes() == before


def _push_fails_then_a_retry_succeeds(hub, config, error_type, message, api=None):
    before = config.path.read_bytes()
    head = hub.repos[REPO].head.oid if REPO in hub.repos else None
    started = time.perf_counter()
    with pytest.raises(error_type, match=message) as error:
        push_to_hub(config.source_checkpoint, config, token=WRITE_TOKEN, api=api)
    assert "\n" not in str(error.value) and REPO in str(error.value)
    assert time.perf_counter() - started < 20
    # nothing half-written locally: the hub config as it was, no temporary files beside it
    assert config.path.read_bytes() == before and load_hub_config(config.path).published is None
    assert sorted(p.name for p in config.path.parent.glob(".*.tmp")) == []
    hub.faults.clear()
    push_to_hub(config.source_checkpoint, config, token=WRITE_TOKEN)
    published = load_hub_config(config.path).published
    assert published["revision"] == hub.repos[REPO].head.oid != head
    assert hub.files(REPO)[WEIGHTS_NAME] == (Path(config.source_checkpoint) / WEIGHTS_NAME).read_bytes()
    return error.value


@pytest.mark.parametrize("fault, error_type, message", [
    (("POST", r"/commit/", 500), ConnectionError, r"answered 500.*nothing was committed; retry later"),
    (("POST", r"/commit/", 503), ConnectionError, r"answered 503"),
    (("POST", r"/commit/", 409), FileExistsError, r"answered 409.*run the same push again"),
    (("GET", r"^/api/models/", 404), FileNotFoundError, r"answered 404.*check repo_id"),
    (("POST", r"/commit/", "drop"), ConnectionError, r"connection broke.*run the same push again"),
    (("POST", r"/preupload/", 403), PermissionError, r"answered 403.*write access"),
])
def test_a_failed_push_is_one_line_leaves_nothing_locally_and_a_retry_succeeds(hub, trained, fault, error_type, message):
    hub.fail(*fault, times=10)
    _push_fails_then_a_retry_succeeds(hub, trained[2], error_type, message)


def test_a_wrong_token_is_a_401_in_one_line(hub, trained):
    _, folder, config = trained
    with pytest.raises(PermissionError, match=r"answered 401.*Invalid credentials.*hf auth login") as error:
        push_to_hub(folder, config, token="hf_not_a_token")
    assert "\n" not in str(error.value) and REPO not in hub.repos and "hf_not_a_token" not in str(error.value)


def test_an_unreachable_hub_fails_at_once_in_one_line(hub, trained):
    _, _, config = trained
    api = HfApi(endpoint=f"http://127.0.0.1:{_closed_port()}", token=WRITE_TOKEN)
    error = _push_fails_then_a_retry_succeeds(hub, config, ConnectionError, r"could not connect.*HF_ENDPOINT", api=api)
    assert "127.0.0.1" in str(error)


def test_a_commit_by_someone_else_meanwhile_is_a_412_and_nothing_is_overwritten(hub, trained):
    _, folder, config = trained
    hub.add_commit(REPO, {}, "created")
    # between push's check of the repo and its commit, another commit lands
    hub.fail("POST", r"/commit/", lambda: hub.add_commit(REPO, {".gitattributes": GITATTRIBUTES}, "someone else"))
    _push_fails_then_a_retry_succeeds(hub, config, FileExistsError, r"answered 412.*changed while pushing")
    assert [c.message for c in hub.repos[REPO].commits][-2] == "someone else"  # kept, the push on top of it


def test_an_interrupted_lfs_upload_is_resent_and_a_lost_commit_answer_is_recognised(hub, trained):
    _, folder, config = trained
    # the storage host drops the first upload of the weights: huggingface_hub sends them again
    hub.fail("PUT", r"^/upload/", "drop")
    push_to_hub(folder, config, token=WRITE_TOKEN)
    assert sum(1 for r in hub.requests if r[:2] == ("storage", "PUT")) == 2
    assert hub.files(REPO)[WEIGHTS_NAME] == (folder / WEIGHTS_NAME).read_bytes()

    # the commit lands but its answer is lost: one line; the same push again commits nothing new and
    # records the commit that holds the files
    saved_model(Path(config.path).parent / "v2", seed=2)
    v2 = measured_hub_config(Path(config.path).parent / "v2", Path(config.path).parent / "v2")
    hub.fail("POST", r"/commit/", "drop_after")
    with pytest.raises(ConnectionError, match="connection broke.*unless the broken request was the commit"):
        push_to_hub(v2.source_checkpoint, v2, token=WRITE_TOKEN, force=True)
    landed = hub.repos[REPO].head.oid
    assert load_hub_config(v2.path).published is None
    push_to_hub(v2.source_checkpoint, v2, token=WRITE_TOKEN)  # no --force needed: the repo holds exactly this
    assert hub.repos[REPO].head.oid == landed == load_hub_config(v2.path).published["revision"]


def test_a_repo_that_holds_other_files_is_refused_and_force_keeps_them(hub, trained, tmp_path, capsys):
    _, folder, config = trained
    hub.add_commit(REPO, {"pytorch_model.bin": b"\0" * 64, CARD_NAME: b"# someone else's model\n"})
    head = hub.repos[REPO].head.oid
    code, out, err = _cli(config.path, tmp_path, capsys)
    line = _one_line_error(err)
    assert code == 2 and "other versions of ['README.md']" in line and "['pytorch_model.bin']" in line
    assert "the other files stay" in line and hub.repos[REPO].head.oid == head
    assert _cli(config.path, tmp_path, capsys, "--force")[0] == 0
    files = hub.files(REPO)
    assert files["pytorch_model.bin"] == b"\0" * 64 and files[CARD_NAME].startswith(b"---\n")
    assert files[WEIGHTS_NAME] == (folder / WEIGHTS_NAME).read_bytes()


def test_the_hubs_verdict_on_the_card_metadata_is_one_line_and_nothing_is_committed(hub, trained):
    _, folder, config = trained
    verdict = {"errors": [{"message": '"model-index[0].results[0].metrics[0].value" must be a number'},
                          {"message": '"license" is not a known license id'}]}
    hub.fail("POST", r"^/api/validate-yaml$", (400, verdict))
    with pytest.raises(ValueError, match="failed: Invalid metadata in README.md.; .*must be a number; .*license") as error:
        push_to_hub(folder, config, token=WRITE_TOKEN)
    assert "\n" not in str(error.value) and REPO in str(error.value)
    assert WEIGHTS_NAME not in hub.files(REPO) and load_hub_config(config.path).published is None


# --- downloads: the Hub says no, or goes away ---------------------------------------------------------
@pytest.fixture
def pushed(hub, trained):
    model, folder, config = trained
    push_to_hub(folder, config, token=WRITE_TOKEN)
    return model.eval()


def _load(name=f"hf-hub:{REPO}"):
    return timm_isomax.create_model(name, pretrained=True).eval()


def _snapshot_weights(hub):
    return sorted(p.name for p in hub.cache.glob(f"models--*/snapshots/*/{WEIGHTS_NAME}"))


@pytest.mark.parametrize("name, message", [
    ("hf-hub:test-org/no-such-model", "the Hub has no repo test-org/no-such-model"),
    (f"hf-hub:{REPO}@{'0' * 40}", "has no such revision"),
])
def test_downloads_of_what_the_hub_lacks_fail_in_one_line(hub, pushed, name, message):
    with pytest.raises(FileNotFoundError, match=message) as error:
        _load(name)
    assert "\n" not in str(error.value)


def test_a_private_repo_without_a_token_is_not_found_and_a_403_says_to_log_in(hub, pushed):
    hub.repos[REPO].private = True
    with pytest.raises(FileNotFoundError, match=r"no repo .* \(or it is private: log in"):
        _load()
    hub.repos[REPO].private = False
    hub.fail("HEAD", r"/resolve/", 403)
    with pytest.raises(FileNotFoundError, match="download failed .*answered 403") as error:
        _load()
    assert "\n" not in str(error.value)


def test_an_unreachable_hub_fails_downloads_at_once_in_one_line(hub, pushed, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=f"the Hub \\({url}\\) is unreachable") as error:
        _load()
    assert "\n" not in str(error.value) and time.perf_counter() - started < 10  # not ~25 s of retries
    assert constants.HF_HUB_OFFLINE is False  # restored


def test_a_server_error_on_the_weights_fails_in_one_line_and_a_retry_succeeds(hub, pushed, images):
    hub.fail("GET", r"^/lfs/", 503)
    with pytest.raises(FileNotFoundError, match="failed: the Hub answered 503.*retry") as error:
        _load()
    assert "\n" not in str(error.value) and _snapshot_weights(hub) == []  # nothing half-written is used
    with torch.no_grad():
        torch.testing.assert_close(_load()(images), pushed(images), rtol=0, atol=0)


def test_an_interrupted_download_resumes_and_one_that_stays_broken_fails_in_one_line(hub, pushed, images):
    hub.fail("GET", r"^/lfs/", "drop")  # the connection goes before the end: resumed with Range
    with torch.no_grad():
        torch.testing.assert_close(_load()(images), pushed(images), rtol=0, atol=0)
    assert any("range" in r[3] for r in hub.requests if r[:2] == ("storage", "GET"))

    for path in hub.cache.glob("models--*"):  # start again from an empty cache
        import shutil

        shutil.rmtree(path)
    hub.fail("GET", r"^/lfs/", "drop", times=100)
    with pytest.raises(FileNotFoundError, match="connection broke.*resumes") as error:
        _load()
    assert "\n" not in str(error.value) and _snapshot_weights(hub) == []
    hub.faults.clear()
    with torch.no_grad():
        torch.testing.assert_close(_load()(images), pushed(images), rtol=0, atol=0)


def test_the_server_serves_what_the_client_checks(hub, pushed):
    # the headers huggingface_hub's download relies on, as the Hub sends them (a regression guard for the fixture)
    import httpx2

    regular = httpx2.head(f"{hub.url}/{REPO}/resolve/main/{CONFIG_NAME}")
    lfs = httpx2.head(f"{hub.url}/{REPO}/resolve/main/{WEIGHTS_NAME}")
    missing = httpx2.head(f"{hub.url}/{REPO}/resolve/main/nope.txt")
    assert regular.status_code == 200 and regular.headers["X-Repo-Commit"] == hub.repos[REPO].head.oid
    assert lfs.status_code == 302 and lfs.headers["Location"].startswith(hub.storage_url)
    assert lfs.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(hub.files(REPO)[WEIGHTS_NAME]).hexdigest()
    assert int(lfs.headers["X-Linked-Size"]) == len(hub.files(REPO)[WEIGHTS_NAME])
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"

