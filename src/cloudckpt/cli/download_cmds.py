"""``download``: a checkpoint of a Hugging Face ``Trainer`` run as a stock ``checkpoint-N/``
directory that an unmodified ``Trainer`` resumes from (``cloudckpt.integrations.hf.download``).
torch and safetensors are imported only when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]

_EPILOG = """examples:
  cloudckpt download s3://bucket/runs/bert out
      writes out/checkpoint-<latest step>/; then, with stock transformers:
      Trainer(...).train(resume_from_checkpoint="out/checkpoint-<step>")
  cloudckpt download s3://bucket/runs/bert --step 500 out
  cloudckpt download s3://bucket/runs/bert/step-000000000500 out --overwrite

The checkpoint must come from cloudckpt's Hugging Face integration (CloudckptTrainer, or
CloudckptCallback mirroring a plain Trainer). The directory holds model.safetensors,
config.json (when the checkpoint has the model config; then from_pretrained loads it too),
optimizer.pt, scheduler.pt, scaler.pt (fp16), rng_state.pth and trainer_state.json."""


def register(sub: Any) -> None:
    """Add the ``download`` command to the ``cloudckpt`` parser's subcommands."""
    p = sub.add_parser("download", help="write a Hugging Face Trainer checkpoint-N/ directory",
                       description="Write a checkpoint of a Hugging Face Trainer run as a "
                                   "stock checkpoint-N/ directory that an unmodified Trainer "
                                   "resumes from.", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("uri", help="a run root (s3://bucket/run, a local path...) or one checkpoint")
    p.add_argument("dir", help="local directory to write checkpoint-N/ into (created if needed)")
    p.add_argument("--step", type=int, help="the step to download (default: the latest of the "
                                            "run's live lineage)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing DIR/checkpoint-N (default: refuse, exit 6)")
    p.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    """Run ``cloudckpt download``; returns the exit status.

    Raises:
        As :func:`cloudckpt.integrations.hf.download.download_checkpoint` (the CLI maps them
        to one line and an exit status).
    """
    from cloudckpt.integrations.hf.download import download_checkpoint

    out = download_checkpoint(args.uri, args.dir, step=args.step,
                              storage_options=args.storage_options, overwrite=args.overwrite)
    print(f"downloaded {out.source} (step {out.step}) -> {out.path}: {', '.join(out.files)}")
    return 0
