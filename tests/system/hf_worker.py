"""Tiny Hugging Face training pieces shared by the HF tests, and the subprocess body of the
preemption test (``python -m tests.system.hf_worker MODE URI OPTS_JSON OUT_DIR``).

The subprocess trains a tiny BERT with preemption handling on (``MODE`` ``trainer``:
``CloudckptTrainer(preemption=True)``; ``callback``: a plain ``Trainer`` with
``CloudckptCallback(preemption=True)``), prints ``STEP n`` after each step (slowed a little
so a signal lands mid-run), and ``TRAIN RETURNED`` if ``train()`` ever returns (it must not:
a preempted run exits with status 0 from inside ``train()``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch


class TokenDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """``n`` random 8-token sequences with a parity label."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (n, 8), generator=g)
        self.labels = (self.ids.sum(1) % 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
                "labels": self.labels[i]}


def bert(seed: int) -> Any:
    """A 2-layer, 32-wide ``BertForSequenceClassification`` (2 labels), seeded."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)
    return BertForSequenceClassification(cfg)


def args(out: Path | str, **kw: Any) -> Any:
    """``TrainingArguments`` for CPU, 10 steps, save and eval every 5 (override with ``kw``)."""
    from transformers import TrainingArguments

    base: dict[str, Any] = dict(
        output_dir=str(out), report_to=[], use_cpu=True, max_steps=10, save_strategy="steps",
        save_steps=5, eval_strategy="steps", eval_steps=5, logging_steps=5,
        per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=5e-3,
        seed=0, disable_tqdm=True, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


def weights(model: Any) -> dict[str, torch.Tensor]:
    """A detached copy of ``model.state_dict()``."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def main(argv: list[str]) -> None:
    from transformers import Trainer, TrainerCallback

    from cloudckpt.integrations.hf import CloudckptCallback, CloudckptTrainer

    mode, uri, opts, out = argv[0], argv[1], json.loads(argv[2]), Path(argv[3])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    class Report(TrainerCallback):  # type: ignore[misc, unused-ignore]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            print(f"STEP {state.global_step}", flush=True)
            time.sleep(0.05)

    common: dict[str, Any] = dict(
        model=bert(0), args=args(out, max_steps=400, save_steps=1000, eval_strategy="no"),
        train_dataset=TokenDataset(64, 1))
    if mode == "trainer":
        tr = CloudckptTrainer(**common, callbacks=[Report()], checkpoint_uri=uri,
                              storage_options=opts, preemption=True)
    else:
        cb = CloudckptCallback(uri, storage_options=opts, preemption=True)
        tr = Trainer(**common, callbacks=[Report(), cb])
    tr.train()
    print("TRAIN RETURNED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
