"""Downloads from the Hugging Face Hub made predictable: offline at once where the Hub cannot be reached, and
every failure one line that names the repo, the cause and what to do."""
import contextlib
from typing import ContextManager, Iterator, Optional

from .network import hub_failure, hub_reachable

__all__ = ["hub_downloads", "timm_weight_downloads"]


@contextlib.contextmanager
def hub_downloads(repo_id: str, what: str, todo: Optional[str] = None) -> Iterator[None]:
    """Downloads of ``repo_id`` from the Hugging Face Hub (``what``: the model they are for), made predictable.

    Where the Hub (``HF_ENDPOINT``) cannot even be connected to, downloads run in offline mode for this
    block, so a cached copy loads at once and a missing one fails at once, instead of after
    huggingface_hub's retries (~25 s). Any failure to get the files (no such repo, revision or file, refused
    access, a server error, a connection that broke and stayed broken) is one ``FileNotFoundError`` line
    naming the repo, the cause and what to do. A broken download leaves only huggingface_hub's
    ``.incomplete`` blob, which the next try resumes; nothing half-written is ever loaded.

    Example:
        >>> with hub_downloads("timm-isomax/resnet10t_isomaxplus.mnist", "resnet10t_isomaxplus.mnist"):
        ...     model = timm.create_model("hf-hub:timm-isomax/resnet10t_isomaxplus.mnist", pretrained=True)
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)

    offline_before = constants.HF_HUB_OFFLINE
    unreachable = not offline_before and not hub_reachable(constants.ENDPOINT)
    if unreachable:
        constants.HF_HUB_OFFLINE = True  # read by huggingface_hub at each call; restored below
    todo = todo or (f"load a local copy with timm.create_model('local-dir:PATH', pretrained=True), or rebuild it "
                    f"with `timm-isomax reproduce HUB_CONFIG`")
    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        failure = hub_failure(error.__cause__) if error.__cause__ is not None else None
        why = (f"the Hub ({constants.ENDPOINT}) is unreachable from here" if unreachable else
               "HF_HUB_OFFLINE is set" if offline_before else
               f"the download failed ({failure[1]})" if failure else "the download failed")
        raise FileNotFoundError(f"{what}: {repo_id} is not in the local Hugging Face cache and {why}; connect and retry, "
                                f"{todo}.") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{what}: the Hub has no repo {repo_id} (or it is private: log in with `hf auth login` "
                                f"or set HF_TOKEN); check the name, or {todo}.") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{what}: {repo_id} has no such revision (the commit, branch or tag after '@'); check "
                                f"it against the repo's history, or drop it to load the latest commit.") from None
    except EntryNotFoundError as error:
        raise FileNotFoundError(f"{what}: {repo_id} lacks a file the model needs ({str(error).splitlines()[0]}); it is "
                                f"not a timm model repo (config.json + model.safetensors).") from None
    except Exception as error:
        failure = hub_failure(error)
        if failure is None:
            raise
        status, cause = failure
        then = ("log in with `hf auth login` or set HF_TOKEN to a token that may read it" if status in (401, 403) else
                "retry: a broken download resumes where it stopped" if status is None or status >= 500 or status == 429
                else f"check the repo, or {todo}")
        raise FileNotFoundError(f"{what}: downloading {repo_id} from {constants.ENDPOINT} failed: {cause}; {then}.") from None
    finally:
        constants.HF_HUB_OFFLINE = offline_before


def timm_weight_downloads(model_name: str) -> ContextManager[None]:
    """:func:`hub_downloads` for the weights timm downloads for a registry name (``resnet18.a1_in1k``, or an
    IsoMax name mirroring it) from the Hub: one line at once where they cannot be had, instead of
    huggingface_hub's retries (~50 s) and a message that names no repo. Other names: a no-op context."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError:  # an unknown tag: timm.create_model says so itself
        cfg = None
    if cfg is None or not cfg.hf_hub_id or cfg.file or cfg.state_dict:
        return contextlib.nullcontext()
    return hub_downloads(cfg.hf_hub_id.split("@")[0], model_name,
                         todo="give the weights as a file (finetune --checkpoint FILE, or "
                              "pretrained_cfg_overlay=dict(file=PATH)), or train with --from-scratch")
