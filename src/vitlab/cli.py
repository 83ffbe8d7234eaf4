"""The ``vitlab`` command line: train, finetune, weights, eval, predict, attention, demo, inspect, report, export,
push, shards, sweep, compare, info, presets.

Configuration comes in layers, later ones winning: the preset (``--preset``), YAML files
(``--config FILE``), then single flags (``--train.epochs 3``, ``--model.depth 4``). Parsing
is jsonargparse's, driven by the dataclasses in :mod:`vitlab.config` and :mod:`vitlab.model`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from jsonargparse import ArgumentParser

from vitlab.flags import budget_overrides_epochs, given_flags, parse_finetune_flags, parse_train_flags, train_parser
from vitlab.presets import FINETUNE_PRESETS, MODEL_ALIASES, MODEL_PRESETS, RUN_PRESETS

__all__ = ["COMMANDS", "budget_overrides_epochs", "main", "parse_train_flags", "train_parser"]

def cmd_train(argv: list[str]) -> int:
    from vitlab.training import train

    args, cfg = parse_train_flags(argv)
    if args.resume:
        return _finish(train(None, args.resume, resume=True, progress=not args.quiet, epochs=_resume_epochs(argv, args)))
    if note := budget_overrides_epochs(argv, cfg):
        print(note, file=sys.stderr)
    run_dir = args.run_dir or f"runs/{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return _finish(train(cfg, run_dir, progress=not args.quiet))


def cmd_finetune(argv: list[str]) -> int:
    from vitlab.training import train

    args, cfg = parse_finetune_flags(argv)
    if args.resume:
        return _finish(train(None, args.resume, resume=True, progress=not args.quiet, epochs=_resume_epochs(argv, args)))
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in cfg.data.dataset).strip("_.")[-48:]  # hf:user/name -> hf_user_name
    run_dir = args.run_dir or f"runs/finetune-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    return _finish(train(cfg, run_dir, progress=not args.quiet))


def _resume_epochs(argv: list[str], args) -> int | None:
    """``--resume RUN_DIR`` takes the run's own config.yaml; only ``--train.epochs N`` may come with it (train longer)."""
    flags = given_flags(argv)
    settings = [f for f in flags if f.startswith(("--model", "--data", "--train", "--config", "--preset", "--arch",
                                                   "--finetune", "--pretrained", "--dataset", "--mode"))]
    if [f for f in settings if f != "--train.epochs"]:
        raise ValueError(f"--resume continues a run with the configuration saved in {args.resume}/config.yaml; drop "
                         f"{[f for f in settings if f != '--train.epochs']} (only --train.epochs N may come with it, to "
                         "train longer), or start a new run without --resume")
    return args.train.epochs if "--train.epochs" in settings else None


def parse_with_threads(parser: ArgumentParser, argv: list[str]):
    """``parser``'s arguments plus ``--threads N`` (CPU threads for PyTorch), applied before any work."""
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    return args


def _finish(result) -> int:
    final = result.final
    if final and os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"done: {result.run_dir} | val acc {final['val_acc']:.4f} (best {result.best_val_acc:.4f}) after "
              f"{final['epoch']} epochs, {final['elapsed_s']:.0f}s")
    return 0


def cmd_weights(argv: list[str]) -> int:
    from vitlab.pretrained import WEIGHTS
    from vitlab.pretrained.registry import WEIGHT_ALIASES

    ArgumentParser(prog="vitlab weights", description="List the registry of pretrained weights.").parse_args(argv)
    for name, w in WEIGHTS.items():
        aliases = [a for a, target in WEIGHT_ALIASES.items() if target == name]
        top1 = (f"ImageNet top-1 {w.meta['top1']}%" if w.meta.get("top1") else
                f"{w.config.num_classes}-class head" + ("" if w.config.num_classes != 1000 else ", top-1 not recorded"))
        p = w.preprocessing
        resize = f"{p.resize_size} x {p.resize_size} (squash)" if p.crop_mode == "squash" else f"shorter side {p.resize_size}"
        print(f"{name}{'  (also: ' + ', '.join(aliases) + ')' if aliases else ''}\n"
              f"    {w.source_format} layout, {w.meta.get('params', 0):,} params, {top1}, pretrained on "
              f"{w.meta.get('pretrain')}, {w.meta.get('license')}; source: {w.hf_repo or w.url}\n"
              f"    preprocessing: resize {resize} ({p.interpolation}), crop {p.crop_size[0]}, mean {p.mean}, std {p.std}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    from vitlab.evaluate import TTA_MODES, evaluate_checkpoint, write_eval_report

    parser = ArgumentParser(prog="vitlab eval", description="Accuracy, per-class accuracy and confusion matrix.")
    parser.add_argument("checkpoint", help="a .safetensors checkpoint or a run directory (takes best)")
    parser.add_argument("--split", default="val", choices=["val", "train"],
                        help="val: the split validated during training (the test set unless val_fraction was set)")
    parser.add_argument("--data_dir", "--data-dir", default=None, help="override the data root")
    parser.add_argument("--data_path", "--data-path", default=None, help="override the image folder path")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation: flip averages each image's and its mirror image's predictions "
                             "(for models trained with flips)")
    parser.add_argument("--out", default=None, help="write metrics.json, per_class.csv and confusion.csv here")
    args = parse_with_threads(parser, argv)
    report = evaluate_checkpoint(args.checkpoint, split=args.split, data_dir=args.data_dir, data_path=args.data_path,
                                 batch_size=args.batch_size, device=args.device, tta=args.tta)
    print(report.as_text())
    if args.out:
        write_eval_report(report, Path(args.out))
        print(f"written to {args.out}")
    return 0


def cmd_predict(argv: list[str]) -> int:
    from vitlab.predict import predict_files

    parser = ArgumentParser(prog="vitlab predict", description="Top-k classes for image files.")
    parser.add_argument("checkpoint", help="a checkpoint, a run directory (takes best), or pretrained weights "
                                           "(a registry name or a weights file)")
    parser.add_argument("images", nargs="+", help="image files, or folders of them")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parse_with_threads(parser, argv)
    results = predict_files(args.checkpoint, args.images, topk=args.topk, device=args.device)
    failed = [item for item in results if "error" in item]
    if args.json:
        print(json.dumps(results, indent=2))
    for item in [] if args.json else results:
        if "error" in item:
            print(f"vitlab predict: error: {item['error']}", file=sys.stderr)
            continue
        print(item["image"])
        for rank, (name, prob) in enumerate(zip(item["classes"], item["probs"]), 1):
            print(f"  {rank}. {name:<30} {prob:.4f}")
    if failed:
        print(f"vitlab predict: {len(failed)} of {len(results)} images could not be read", file=sys.stderr)
    return 2 if failed else 0  # bad input, as for every other error


def _source_help(what: str) -> str:
    return f"{what}: a checkpoint, a run directory (takes best), or pretrained weights (a registry name or weights file)"


def cmd_attention(argv: list[str]) -> int:
    from vitlab.device import resolve_device
    from vitlab.insight.explain import write_attention_overlays
    from vitlab.predict import load_model

    parser = ArgumentParser(prog="vitlab attention", description="Attention overlays: for each image a grid of the "
                            "input, the attention rollout and the last layer's per-head maps, with the top-k prediction.")
    parser.add_argument("model", help=_source_help("the model"))
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", required=True, help="folder for the PNGs (created)")
    parser.add_argument("--head_fusion", "--head-fusion", default="mean", choices=["mean", "max", "min"],
                        help="how rollout combines the heads of a layer")
    parser.add_argument("--discard_ratio", "--discard-ratio", type=float, default=0.0,
                        help="fraction of the weakest attention weights dropped per layer before rollout")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parse_with_threads(parser, argv)
    model, info = load_model(args.model, device=resolve_device(args.device))
    for item in write_attention_overlays(model, info, args.images, args.out, args.head_fusion, args.discard_ratio,
                                         args.topk):
        top = ", ".join(f"{c} {p:.2f}" for c, p in zip(item.classes, item.probs))
        print(f"{item.image}: {top} -> {item.figure}")
    return 0


def cmd_demo(argv: list[str]) -> int:
    parser = ArgumentParser(prog="vitlab demo", description="A web page to try the model on photos: top-k classes, the "
                            "attention-rollout overlay and the per-head maps of a chosen layer (Gradio; pip install "
                            "\"vitlab[demo]\").")
    parser.add_argument("model", help=_source_help("the model") + ", a pushed folder or hf-hub:user/name")
    parser.add_argument("--examples", nargs="*", default=[],
                        help="example image files or folders (default: one image per class of the run's image folder)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parse_with_threads(parser, argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError('vitlab demo needs Gradio: pip install "vitlab[demo]"') from None
    from vitlab.insight.demo import launch_demo

    launch_demo(args.model, args.examples, args.host, args.port, args.share, args.topk, args.device)
    return 0


def cmd_inspect(argv: list[str]) -> int:
    from vitlab.device import resolve_device
    from vitlab.insight.explain import write_model_figures
    from vitlab.predict import load_model, load_model_images

    parser = ArgumentParser(prog="vitlab inspect", description="The ViT paper's figure 7 for a model: principal "
                            "components of the patch-embedding filters, position-embedding similarity, and mean "
                            "attention distance per head against depth.")
    parser.add_argument("model", help=_source_help("the model"))
    parser.add_argument("--out", required=True, help="folder for the PNGs (created)")
    parser.add_argument("--images", nargs="*", default=[],
                        help="image files for the attention distance (default for a checkpoint: validation images "
                             "of its data set)")
    parser.add_argument("--num_images", "--num-images", type=int, default=128,
                        help="validation images used for the attention distance (the paper uses 128)")
    parser.add_argument("--device", default="auto")
    args = parse_with_threads(parser, argv)
    device = resolve_device(args.device)
    model, info = load_model(args.model, device=device)
    images = None
    if args.images:
        images = load_model_images(model, info, args.images)
    elif "run_config" in info and args.num_images > 0:
        from vitlab.evaluate import training_data
        from vitlab.insight.run_figures import split_images

        data = training_data(info, args.model, model.cfg.img_size, whole_splits=False)
        images = split_images(data.val, list(range(min(args.num_images, len(data.val)))))
    name = info.get("pretrained") or Path(args.model).name
    written = write_model_figures(model, info, args.out, images, name=name, progress=None)
    for figure, path in written.items():
        print(f"{figure}: {path}")
    if model.pos_embed is None:
        print("position_similarity: skipped, the model has no position embedding")
    if images is None:
        print("attention_distance: skipped, pass --images FILE... to measure it")
    return 0


def cmd_report(argv: list[str]) -> int:
    from vitlab.insight.report import build_report

    parser = ArgumentParser(prog="vitlab report", description="One self-contained HTML page about a run (config, "
                            "metrics, curves, confusion matrix, mistakes, attention); opens offline from disk.")
    parser.add_argument("run_dir", help="a run directory written by vitlab train or vitlab finetune")
    parser.add_argument("--out", default=None, help="HTML file to write (default RUN_DIR/report.html)")
    parser.add_argument("--attention_images", "--attention-images", type=int, default=4,
                        help="validation images shown with attention overlays")
    args = parse_with_threads(parser, argv)
    print(f"written {build_report(args.run_dir, args.out, args.attention_images, progress=None)}")
    return 0


def cmd_export(argv: list[str]) -> int:
    from vitlab.export import FORMATS, SUFFIX, export_model, load_exported
    from vitlab.predict import load_model
    from vitlab.progress import steps

    parser = ArgumentParser(prog="vitlab export", description="Export a model for deployment: ONNX, TorchScript or a "
                            "torch.export program, with a dynamic batch size and a JSON sidecar (classes, preprocessing).")
    parser.add_argument("model", help=_source_help("the model"))
    parser.add_argument("--format", default="onnx", choices=list(FORMATS))
    parser.add_argument("--out", default=None, help="file to write (default: beside a checkpoint, or ./NAME + suffix)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                        help="ONNX exporter: torch.export-based (dynamo) or the older TorchScript-based one")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--no_check", "--no-check", action="store_true",
                        help="skip running the exported model once against PyTorch")
    args = parse_with_threads(parser, argv)
    model, info = load_model(args.model)
    source = Path(args.model)
    stem = source.stem if source.is_file() else (source.name if source.is_dir() else str(args.model).replace("/", "_"))
    default_dir = source.parent if source.is_file() else (source if source.is_dir() else Path("."))
    out = Path(args.out) if args.out else default_dir / f"{stem}{SUFFIX[args.format]}"
    with steps("vitlab export", 1 if args.no_check else 2) as step:
        step(f"exporting ({args.format})")
        export_model(model, out, args.format, info, opset=args.opset, exporter=args.exporter, overwrite=args.overwrite)
        message = f"written {out} (+ {out.name}.json)"
        if not args.no_check:
            import torch

            step("checking against PyTorch")
            x = torch.randn(3, model.cfg.in_chans, *model.cfg.img_size)
            with torch.no_grad():
                diff = (load_exported(out)(x) - model(x)).abs().max().item()
            message += f"; checked on a batch of 3: max |difference| from PyTorch {diff:.2e}"
    print(message)
    return 0


def cmd_push(argv: list[str]) -> int:
    import tempfile

    from vitlab.hub import push, write_hub_folder

    parser = ArgumentParser(prog="vitlab push", description="A run's best model as a Hugging Face Hub folder that timm "
                            "loads (config.json, model.safetensors, README.md model card): written to --dir, and/or "
                            "uploaded to --repo user/name (needs `huggingface-cli login`).")
    parser.add_argument("run", help="a run directory (its best checkpoint) or a checkpoint file")
    parser.add_argument("--dir", default=None, help="write the folder here (created; never overwritten without --overwrite)")
    parser.add_argument("--repo", default=None, help="upload to this Hub repository (user/name)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--overwrite", action="store_true", help="replace the files in a non-empty --dir")
    args = parser.parse_args(argv)
    if not args.dir and not args.repo:
        raise ValueError("vitlab push needs --dir DIR (write the folder) and/or --repo user/name (upload it)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_hub_folder(args.run, args.dir or Path(tmp) / "hub", overwrite=args.overwrite)
        print(f"written {folder} (config.json, model.safetensors, README.md)")
        if args.repo:
            print(f"uploaded: {push(folder, args.repo, private=args.private)}")
    return 0


def cmd_shards(argv: list[str]) -> int:
    from vitlab.data.shards import write_shards

    parser = ArgumentParser(prog="vitlab shards", description="Write an image folder (train/ and val/ of class folders) "
                            "as WebDataset tar shards, images re-encoded as JPEG at a smaller size, in a seeded random "
                            "order: a data set too large to decode into the store, trained with --data.dataset webdataset "
                            "--data.path OUT.")
    parser.add_argument("source", help="image folder with train/ and val/ (or valid/, validation/, test/)")
    parser.add_argument("out", help="output folder (train/*.tar, val/*.tar, classes.txt); must hold no shards yet")
    parser.add_argument("--max_size", type=int, default=256, help="shorter side at most this many pixels")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality; 0 keeps the pixels exactly (PNG)")
    parser.add_argument("--per_shard", type=int, default=2000, help="samples per shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order the samples are written in")
    parser.add_argument("--skip_bad_images", action="store_true", help="leave out images that cannot be decoded")
    parser.add_argument("--num_workers", type=int, default=2, help="processes that decode and encode")
    args = parser.parse_args(argv)
    if args.max_size < 1 or args.per_shard < 1 or not 0 <= args.quality <= 100:
        raise ValueError("--max_size and --per_shard must be positive and --quality between 0 and 100")
    written = write_shards(Path(args.source), Path(args.out), args.max_size, args.quality or None, args.per_shard,
                           args.seed, args.skip_bad_images, args.num_workers)
    print(f"written {written['train']} training and {written['val']} validation samples as shards under {args.out}; "
          f"train with --data.dataset webdataset --data.path {args.out}")
    return 0


def cmd_sweep(argv: list[str]) -> int:
    import shlex

    from vitlab.experiments import SweepSpec, plan_sweep, run_sweep
    from vitlab.experiments.sweep import describe_plan

    parser = ArgumentParser(prog="vitlab sweep", description="Train one run per configuration and seed of a sweep file "
                            "(each `vitlab train` in its own process), then write results.csv, results.md and plots. "
                            "Running it again skips finished trials and resumes interrupted ones.")
    parser.add_argument("sweep_file", help="YAML: name, base (a `vitlab train --config` file), grid and/or points, seeds")
    parser.add_argument("--out", default=None, help="output folder (default sweeps/NAME)")
    parser.add_argument("--workers", type=int, default=1,
                        help="trials at a time: each gets its own GPU (round-robin) or an equal share of the CPU cores")
    parser.add_argument("--dry_run", "--dry-run", action="store_true", help="list the trials and their state; train nothing")
    args = parser.parse_args(argv)
    spec = SweepSpec.load(args.sweep_file)
    out = Path(args.out or Path("sweeps") / spec.name)
    if args.dry_run:
        print(describe_plan(plan_sweep(spec, out), spec, out))
        return 0
    try:
        failed = run_sweep(spec, out, args.workers, command=shlex.join(["vitlab", "sweep", *argv]))
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials and epochs are kept; run the same command again to continue", file=sys.stderr)
        return 130
    return 1 if failed else 0


def cmd_compare(argv: list[str]) -> int:
    import shlex

    from vitlab.experiments import compare_runs, write_results
    from vitlab.experiments.summary import results_markdown

    parser = ArgumentParser(prog="vitlab compare", description="Compare runs in one table: runs that differ only in "
                            "the seed form one row (mean ± std), the columns are the settings that differ.")
    parser.add_argument("run_dirs", nargs="+", help="run directories written by vitlab train")
    parser.add_argument("--labels", nargs="+", default=None, help="a name for each run directory, in the same order")
    parser.add_argument("--out", default=None, help="also write results.md, results.csv and accuracy_vs_time.png here")
    args = parser.parse_args(argv)
    results, keys = compare_runs(args.run_dirs, args.labels)
    command = shlex.join(["vitlab", "compare", *argv])
    print(results_markdown(results, keys, "compare", command))
    if args.out:
        written = write_results(args.out, results, keys, "compare", command, setting_plots=False)
        print(f"written in {args.out}: {', '.join(p.name for p in written)}")
    return 0


def cmd_info(argv: list[str]) -> int:
    from vitlab.info import describe

    parser = ArgumentParser(prog="vitlab info", description="Architecture, parameters and FLOPs of a preset.")
    parser.add_argument("preset", help="a model preset, a run preset, or a checkpoint file")
    parser.add_argument("--num_classes", "--num-classes", type=int, default=None, help="head size (default: the preset's)")
    args = parser.parse_args(argv)
    print(describe(args.preset, num_classes=args.num_classes))
    return 0


def cmd_presets(argv: list[str]) -> int:
    print("run presets (vitlab train --preset NAME):")
    for name, cfg in RUN_PRESETS.items():
        m, t = cfg.model, cfg.train
        print(f"  {name:<16} {cfg.data.dataset}, {m.img_size[0]}x{m.img_size[1]} patch {m.patch_size[0]}, dim "
              f"{m.embed_dim}, depth {m.depth}, {t.epochs} epochs, {t.optimizer} lr {t.lr}")
    print("fine-tuning presets (vitlab finetune --preset NAME):")
    for name, cfg in FINETUNE_PRESETS.items():
        t, ft = cfg.train, cfg.finetune
        print(f"  {name:<16} {cfg.data.dataset}, from {ft.pretrained}, {ft.mode}, {t.epochs} epochs, {t.optimizer} lr {t.lr}")
    print("model presets (vitlab info NAME):")
    for name in MODEL_PRESETS:
        aliases = [a for a, target in MODEL_ALIASES.items() if target == name]
        print(f"  {name}" + (f"  (also: {', '.join(aliases)})" if aliases else ""))
    return 0


COMMANDS = {"train": cmd_train, "finetune": cmd_finetune, "weights": cmd_weights, "eval": cmd_eval,
            "predict": cmd_predict, "attention": cmd_attention, "demo": cmd_demo, "inspect": cmd_inspect,
            "report": cmd_report, "export": cmd_export, "push": cmd_push, "shards": cmd_shards, "sweep": cmd_sweep,
            "compare": cmd_compare, "info": cmd_info, "presets": cmd_presets}

USAGE = """usage: vitlab COMMAND [options]

commands:
  train     train a ViT from scratch (default: the MNIST preset); --resume RUN_DIR continues a run
  finetune  fine-tune pretrained weights on a data set (linear probe, staged, full)
  weights   list the registry of pretrained weights
  eval      accuracy, per-class accuracy and confusion matrix of a checkpoint
  predict   top-k classes for image files
  attention attention rollout and per-head maps over image files (PNG grids)
  demo      a web page (Gradio) to try the model on photos, with its attention
  inspect   the ViT paper's figures for a model: filters, position similarity, attention distance
  report    one self-contained HTML page about a run
  export    ONNX, TorchScript or torch.export program with a dynamic batch size
  push      a run's model as a Hugging Face Hub folder that timm loads (--dir, --repo user/name)
  shards    an image folder as WebDataset tar shards (re-encoded JPEG), to stream data larger than the disk cache
  sweep     train every configuration x seed of a sweep file; results table and plots (resumable)
  compare   one table of hand-picked runs: the settings that differ, accuracy over seeds, cost
  info      architecture, parameter count and FLOPs of a preset
  presets   list the training recipes and model presets

`vitlab COMMAND --help` describes each command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from vitlab._version import __version__

        print(f"vitlab {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"vitlab: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except KeyboardInterrupt:
        print("\ninterrupted: finished epochs are saved; continue with `vitlab train --resume RUN_DIR`",
              file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError) as exc:  # bad input: one clear line, never a traceback
        print(f"vitlab {argv[0]}: error: {error_message(exc)}", file=sys.stderr)
        return 2


def error_message(exc: BaseException) -> str:
    """The message of ``exc``; for one re-raised from a DataLoader worker, the original's last line, not the traceback."""
    message = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    if "Original Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return message


if __name__ == "__main__":
    sys.exit(main())
