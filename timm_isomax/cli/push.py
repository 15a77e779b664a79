"""Publish a trained IsoMax model to the Hugging Face Hub from its hub config.

    # see exactly what would be uploaded (config.json, model.safetensors, README.md), contact nobody
    timm-isomax push hub_configs/resnet10t_isomaxplus.mnist.json --dry-run outputs/hub_dry_run

    # upload (token from --token-file, HF_TOKEN or `hf auth login`; never printed)
    timm-isomax push hub_configs/resnet10t_isomaxplus.mnist.json

    # another Hub-protocol server (a mirror, a test server)
    HF_ENDPOINT=http://127.0.0.1:8080 timm-isomax push hub_configs/resnet10t_isomaxplus.mnist.json

The model folder defaults to the config's source_checkpoint; its metrics must have been measured with
timm-isomax reproduce (the weights must be the ones measured). One commit uploads config.json,
model.safetensors (LFS) and README.md (model card with model-index metadata). A repo holding other content
(another version of these files, files of something else) is only written with --force, which overwrites
the three files and keeps the others; a repo that already holds exactly these files gets no new commit.
The pushed commit is recorded in the hub config (`published`). Every failure is one line; running the same
push again is safe. After publishing: timm.create_model("hf-hub:ORG/NAME", pretrained=True) wherever the
timm-isomax wheel is installed (from a source checkout: `import timm_isomax` first), or "<architecture>.<tag>"
once the config ships.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from timm_isomax.cli._errors import exit_code
from timm_isomax.hub import load_hub_config, push_to_hub


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="timm-isomax push", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hub_config", help="hub config JSON file (hub_configs/NAME.json)")
    p.add_argument("--folder", help="model folder to publish (default: the config's source_checkpoint)")
    p.add_argument("--dry-run", metavar="DIR", help="write the repo content into DIR instead of uploading")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--force", action="store_true", help="write to a repo holding other content: overwrite config.json, "
                   "model.safetensors and README.md there (other files stay)")
    # a file, not a flag value: a token on the command line ends up in shell history and process lists
    p.add_argument("--token-file", type=Path, help="file holding a Hub token (default: HF_TOKEN or the saved login)")
    args = p.parse_args(argv)
    return exit_code(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    """Publish (or write the dry run), then say where it went."""
    config = load_hub_config(args.hub_config)
    token = args.token_file.read_text().strip() if args.token_file else None
    if token == "":
        raise ValueError(f"{args.token_file} is empty; put a Hub token in it (https://huggingface.co/settings/tokens).")
    result = push_to_hub(args.folder or config.source_checkpoint, config, token=token, private=args.private,
                         dry_run=bool(args.dry_run), force=args.force, dry_run_dir=args.dry_run)
    if args.dry_run:
        files = sorted(p.name for p in Path(result).iterdir())
        print(f"dry run: wrote {', '.join(files)} into {result} (nothing uploaded)")
    else:
        print(f"published {config.name} to {result} at commit {config.published['revision']} (recorded in "
              f"{config.path}); load it with timm.create_model('hf-hub:{config.repo_id}', pretrained=True) "
              f"where timm-isomax is installed")


if __name__ == "__main__":
    sys.exit(main())
