"""Publishing a model folder as a Hub repo: exactly the Hub files (config.json, model.safetensors, the feature
bank, README.md), only for the weights the hub config measured, in one commit on top of the checked one."""
import contextlib
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union

from ..ood.feature_scores import FEATURE_BANK_NAME
from .card import write_model_card
from .config import HubConfig, load_hub_config, write_hub_config
from .folder import CARD_NAME, CONFIG_NAME, IMPORT_HINT, WEIGHTS_NAME, read_config, save_pretrained
from .network import hub_failure
from .provenance import recorded_provenance, weights_sha256

if TYPE_CHECKING:
    from huggingface_hub import HfApi, ModelInfo

__all__ = ["prepare_repo_folder", "push_to_hub", "folder_mismatch", "check_folder_matches"]


def _same(a: Any, b: Any) -> bool:
    # JSON turns tuples into lists and may round floats: compare the values, not their containers
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def folder_mismatch(folder: Union[str, Path], config: "HubConfig") -> Optional[str]:
    """The first way the model in ``folder`` differs from what ``config`` measured, or None if it is that model.

    Checked in this order: the weights file against the hash its own config.json recorded (changed after
    saving?), the architecture, the weights against the hub config's ``metrics.weights_sha256``, the label
    names, the data config. A hub config measured before hashes were recorded has no hash: that is a
    difference too (nothing says which weights its numbers describe).
    """
    folder = Path(folder)
    saved = read_config(folder)
    actual = weights_sha256(folder / WEIGHTS_NAME)
    own = recorded_provenance(saved).get("weights_sha256")
    if own and own != actual:
        return (f"{folder / WEIGHTS_NAME} is not the file its config.json was saved with (SHA-256 {actual[:12]}..., "
                f"recorded {own[:12]}...)")
    if saved.get("architecture") != config.architecture:
        return f"{folder} holds a {saved.get('architecture')} model, the hub config describes {config.architecture}"
    measured = (config.metrics or {}).get("weights_sha256")
    if not measured:
        return (f"{config.path or config.name} records no weights hash, so nothing says which weights its numbers "
                f"describe; run `timm-isomax reproduce --evaluate-only {config.path or 'HUB_CONFIG'}` on this folder")
    if measured != actual:
        return (f"the weights in {folder} (SHA-256 {actual[:12]}...) are not the ones {config.name}'s numbers were "
                f"measured on ({measured[:12]}...); push the folder reproduce measured, or re-measure this one with "
                f"`timm-isomax reproduce --evaluate-only`")
    if config.label_names is not None and not _same(saved.get("label_names"), config.label_names):
        return f"{folder} has label names {saved.get('label_names')}, the hub config {config.label_names}"
    pretrained_cfg = saved.get("pretrained_cfg", {})
    for key, value in (config.data_config or {}).items():
        if not _same(pretrained_cfg.get(key), value):
            return f"{folder} has {key} {pretrained_cfg.get(key)!r}, the hub config's data config {value!r}"
    return None


def check_folder_matches(folder: Union[str, Path], config: "HubConfig") -> None:
    """Raise a one-line ``ValueError`` naming the first difference :func:`folder_mismatch` finds."""
    problem = folder_mismatch(folder, config)
    if problem:
        raise ValueError(f"refusing to publish: {problem}.")


def _check_publishable(folder: Union[str, Path], config: "HubConfig") -> None:
    # the card may only describe the weights its numbers were measured on: no override
    if not config.metrics:
        raise ValueError(f"{config.name} has no measured metrics; run `timm-isomax reproduce {config.path}` first.")
    check_folder_matches(folder, config)


def prepare_repo_folder(folder: Union[str, Path], config: "HubConfig", out: Union[str, Path]) -> List[Path]:
    """Write exactly what goes to the Hub into ``out``: config.json, model.safetensors, README.md.

    The model in ``folder`` (a ``save_pretrained`` / fine-tuning output) is re-exported, so the repo
    holds only the Hub files (no training state), the hub config's tag and the usage hint. Refuses a folder
    that is not the model the hub config measured (as :func:`push_to_hub` does).
    """
    _check_publishable(folder, config)
    return _write_repo_folder(folder, config, out)


def _write_repo_folder(folder: Union[str, Path], config: "HubConfig", out: Union[str, Path]) -> List[Path]:
    # prepare_repo_folder without the check: push_to_hub checks once, before contacting the Hub
    import timm  # the local-dir: loader

    saved = read_config(folder)
    model = timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True)
    out = Path(out)
    # what produced the weights travels with them; the hash is recomputed (and equal: same tensors)
    provenance = {k: v for k, v in recorded_provenance(saved).items() if k != "weights_sha256"}
    save_pretrained(model, out, label_names=config.label_names or saved.get("label_names"),
                    isomax_metadata={"usage": IMPORT_HINT}, data_config=config.data_config, tag=config.tag,
                    provenance=provenance)
    files = [out / CONFIG_NAME, out / WEIGHTS_NAME]
    if (Path(folder) / FEATURE_BANK_NAME).is_file():  # KNN's neighbours and the post-hoc fits travel with the weights
        shutil.copyfile(Path(folder) / FEATURE_BANK_NAME, out / FEATURE_BANK_NAME)
        files.append(out / FEATURE_BANK_NAME)
    write_model_card(config, out, model_folder=folder)
    return [*files, out / CARD_NAME]


# what a push writes; the Hub's own initial commit adds .gitattributes, which is no content of anyone's
_REPO_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
_HUB_OWN_FILES = frozenset({".gitattributes"})


def _git_blob_sha1(content: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _differences(info: "ModelInfo", staged: Dict[str, Path]) -> Tuple[List[str], List[str]]:
    """(files of this push the repo holds with other content, files the repo holds that this push does not write)."""
    import hashlib

    remote = {s.rfilename: s for s in info.siblings or [] if s.rfilename not in _HUB_OWN_FILES}
    changed = []
    for name, path in staged.items():
        sibling = remote.get(name)
        if sibling is None:
            continue
        content = path.read_bytes()
        # an LFS file is known by the SHA-256 of its content, any other by its git blob id
        same = (sibling.lfs.sha256 == hashlib.sha256(content).hexdigest() if sibling.lfs is not None
                else sibling.blob_id == _git_blob_sha1(content))
        if not same:
            changed.append(name)
    return changed, sorted(set(remote) - set(staged))


# what to do after a failed push, by HTTP status (None: the connection failed or broke)
_PUSH_ADVICE = {
    None: "check the network and HF_ENDPOINT, then run the same push again (it sees what, if anything, landed)",
    401: "log in with `hf auth login`, set HF_TOKEN or pass --token-file with a token that has write access",
    403: "push under a namespace your token may write to (repo_id in the hub config), or ask the namespace's "
         "owners for write access",
    404: "check repo_id in the hub config and that your token can see the repo",
    409: "run the same push again: it checks what the repo holds now",
    412: "the repo changed while pushing; run the same push again: it checks what the repo holds now",
}
_PUSH_ERRORS = {None: ConnectionError, 401: PermissionError, 403: PermissionError, 404: FileNotFoundError,
                409: FileExistsError, 412: FileExistsError}


@contextlib.contextmanager
def _push_failures(config: "HubConfig", endpoint: str) -> Iterator[None]:
    # every way the Hub can fail a push, as one line naming the cause and what to do next
    try:
        yield
    except Exception as error:
        failure = hub_failure(error)
        if failure is None:
            if isinstance(error, ValueError) and "\n" in str(error):  # e.g. the Hub's verdict on the card's metadata
                raise ValueError(f"pushing {config.name} to {config.repo_id} failed: "
                                 + "; ".join(line.strip(" -") for line in str(error).splitlines() if line.strip())) from None
            raise
        status, cause = failure
        server_side = status is not None and (status >= 500 or status == 429)
        advice = "retry later" if server_side else _PUSH_ADVICE.get(status, "see the Hub's answer")
        error_type = ConnectionError if server_side else _PUSH_ERRORS.get(status, ValueError)
        landed = ("nothing was committed unless the broken request was the commit itself" if status is None
                  else "nothing was committed")
        raise error_type(f"pushing {config.name} to {config.repo_id} on {endpoint} failed: {cause}; {landed}; "
                         f"{advice}.") from None


@contextlib.contextmanager
def _lfs_uploads() -> Iterator[None]:
    """Uploads in this block go through the Hub's plain LFS protocol, even where ``hf-xet`` is installed
    (huggingface_hub then prefers Xet by itself): LFS is the path tested end to end against the Hub protocol
    (tests/test_hub_http.py), the Hub takes it for every repo, and three files of a small model gain nothing
    from Xet's chunk deduplication."""
    from huggingface_hub import constants

    before = constants.HF_HUB_DISABLE_XET  # read by huggingface_hub at each upload; restored below
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = before


def push_to_hub(
    folder: Union[str, Path],
    hub_config: Union["HubConfig", str, Path],
    token: Optional[str] = None,
    private: bool = False,
    dry_run: bool = False,
    force: bool = False,
    dry_run_dir: Optional[Union[str, Path]] = None,
    api: Optional["HfApi"] = None,
) -> str:
    """Publish the model in ``folder`` as ``hub_config.repo_id``; returns the repo URL (or the dry-run folder).

    One commit on the Hub's ``main`` holding config.json, model.safetensors (LFS) and README.md, made on top of
    the commit that was checked (``parent_commit``), so nothing pushed by someone else in between is overwritten.

    Refuses (``ValueError``, before contacting the Hub) a folder that is not the model the hub config
    measured: other weights (SHA-256), architecture, label names or data config; ``force`` never overrides
    that. Refuses (``FileExistsError``) a repo that holds other content (another version of these files, or
    files that are not this model's) unless ``force``, which overwrites the three files and keeps the others.
    A repo that already holds exactly these files (a second push, or a retry after a push whose answer was
    lost) gets no new commit. After the push, the hub config (its file, when it was read from one) records
    ``published``: the commit and the weights' hash, which is what registers its tag as pretrained weights;
    before that nothing is written locally. Failures are one line (``ConnectionError``: unreachable, a broken
    connection, 5xx; ``PermissionError``: 401/403; ``FileNotFoundError``: 404; ``FileExistsError``: 409/412,
    or other content without ``force``); running the same push again is always safe.

    ``dry_run`` writes exactly what would be uploaded into ``dry_run_dir`` and contacts nobody. The token
    goes to ``HfApi`` only (default: HF_TOKEN or the saved login); it is never printed or written. ``api``:
    an ``HfApi`` of your own (another ``endpoint``, headers); by default one for ``HF_ENDPOINT``.

    Example:
        >>> push_to_hub("outputs/resnet10t_isomaxplus.mnist", "hub_configs/resnet10t_isomaxplus.mnist.json",
        ...             dry_run=True, dry_run_dir="outputs/hub_dry_run")
    """
    from huggingface_hub import CommitOperationAdd

    config = hub_config if not isinstance(hub_config, (str, Path)) else load_hub_config(hub_config)
    if dry_run:
        if dry_run_dir is None:
            raise ValueError("dry_run needs dry_run_dir: the folder to write the repo content into.")
        prepare_repo_folder(folder, config, dry_run_dir)
        return str(dry_run_dir)
    _check_publishable(folder, config)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging, _lfs_uploads():
        staged = {path.name: path for path in _write_repo_folder(folder, config, staging)}
        with _push_failures(config, api.endpoint):
            repo_url = api.create_repo(config.repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.model_info(config.repo_id, files_metadata=True)
            changed, others = _differences(info, staged)
            held = {s.rfilename for s in info.siblings or []}
            if (changed or others) and not force:
                what = "; ".join(part for part in (
                    f"other versions of {changed}" if changed else "",
                    f"files that are not part of this model: {others}" if others else "") if part)
                raise FileExistsError(f"{config.repo_id} already holds {what}; pass force=True (--force) to overwrite "
                                      f"{list(_REPO_FILES)}{' (the other files stay)' if others else ''}.")
            if changed or not set(staged) <= held:
                commit = api.create_commit(
                    config.repo_id, repo_type="model", parent_commit=info.sha,
                    operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                                for name, path in staged.items()],
                    commit_message=f"Upload {config.name} (timm-isomax)",
                    commit_description=f"Weights SHA-256 (tensors): {config.metrics['weights_sha256']}; measured with "
                                       f"`{config.metrics.get('command')}`.")
                revision = commit.oid
            else:  # already there, byte for byte: its commit is the published one
                revision = info.sha
    # the record that makes the tag loadable (pinned to this commit) once the hub config ships
    config.published = dict(revision=revision, weights_sha256=config.metrics["weights_sha256"])
    if config.path is not None:
        write_hub_config(config)
    return str(repo_url)
