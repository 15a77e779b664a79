"""A local web page that shows what a model calls out-of-distribution: upload an image (or pick an example) and see
the model's top classes, its OOD score, the in/out verdict against its threshold, and the score drawn among the ID
validation scores. Two --model values show the same image side by side. Served on 127.0.0.1 only, offline (no
telemetry, no share link); needs gradio: pip install 'timm-isomax[app]'. Examples:

    timm-isomax demo --model out/mnist_isomaxplus
    timm-isomax demo --model out/mnist_softmax --model out/mnist_isomaxplus \\
        --id-dataset ../shared/data/mnist --ood-dataset ../shared/data/notmnist --ood-dataset ../shared/data/fashion_mnist
    timm-isomax demo --model hf-hub:timm-isomax/resnet10t_isomaxplus.mnist --port 7861

--model takes what `timm-isomax evaluate` takes (a model folder, local-dir:DIR, hf-hub:ORG/NAME, a timm name). The ID
histogram is the one the model recorded at training time (ood_config.id_scores) where it has one, else the scores of
--id-dataset; a model without a threshold gets one fitted on --id-dataset (accepting 95% of it). --id-dataset and
--ood-dataset also give the page its example images, and each OOD set its own histogram.
"""
import argparse
import sys
import tempfile
from typing import Optional, Sequence

from timm_isomax.cli._errors import exit_code

__all__ = ["parse_args", "run", "main"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="timm-isomax demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="model name or folder (repeatable: side by side)")
    p.add_argument("--id-dataset", default=None, help="ID dataset (local path or Hub id): examples, and the histogram "
                                                      "or threshold where the model records none")
    p.add_argument("--id-split", default="test")
    p.add_argument("--ood-dataset", action="append", default=[], help="OOD dataset (repeatable): examples and a histogram")
    p.add_argument("--ood-split", default="test")
    p.add_argument("--limit", type=int, default=1000, help="images of each set scored for its histogram (class-balanced "
                                                          "sample, seed 0; default 1000)")
    p.add_argument("--examples", type=int, default=4, help="example images per set on the page (default 4)")
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860; 0: the first free one from 7860 on)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    # asked first: a missing gradio is said before minutes of loading, in one line
    from timm_isomax.app import gradio_problem

    problem = gradio_problem()
    if problem:
        raise ValueError(problem)
    if args.limit < 1 or args.examples < 0:
        raise ValueError("--limit must be >= 1 and --examples >= 0.")
    import datasets

    from timm_isomax.app import build_app, example_images, launch_app, load_demo_model
    from timm_isomax.ood.evaluation import load_eval_set

    datasets.disable_progress_bars()
    id_set = load_eval_set(args.id_dataset, args.id_split, args.limit) if args.id_dataset else None
    ood_sets = [load_eval_set(source, args.ood_split, args.limit) for source in args.ood_dataset]
    models = [load_demo_model(name, id_set, ood_sets, device=args.device) for name in args.model]
    with tempfile.TemporaryDirectory(prefix="timm_isomax_demo_") as folder:
        examples = example_images(id_set, ood_sets, args.examples, folder)
        launch_app(build_app(models, examples), port=args.port or None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: run(args))  # Ctrl+C while serving: gradio closes the server and returns


if __name__ == "__main__":
    sys.exit(main())
