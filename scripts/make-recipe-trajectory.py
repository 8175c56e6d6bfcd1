#!/usr/bin/env python3
"""sentence-transformers 6.3's CrossEncoderTrainer on the tiny BERT run of
tests/fixtures/trajectories.json with the transformers-5 / 2026 recipe items: a fractional
`warmup_steps`, the `cosine_with_min_lr` schedule and `learning_rate_mapping` (the
classifier at 10x the rate). Writes the per-step losses and final logits
tests/fixtures/trajectory_recipe_2026.json holds. Usage:

    python scripts/make-recipe-trajectory.py tests/fixtures tests/fixtures/trajectory_recipe_2026.json
"""
import json
import os
import shutil
import sys
import tempfile

import sentence_transformers
import torch
import transformers
from datasets import Dataset
from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments
from transformers import TrainerCallback

SETTINGS = {
    "steps": 8,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup_steps": 0.25,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr": 1e-4},
    "learning_rate_mapping": {"classifier": 1e-2},
    "max_length": 64,
    "seed": 12,
}


class Losses(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def main():
    fixtures, target = sys.argv[1:3]
    run = json.load(open(os.path.join(fixtures, "trajectories.json")))["runs"]["tiny-bert-ce/bce"]
    work = tempfile.mkdtemp()
    model_dir = os.path.join(work, "model")
    shutil.copytree(os.path.join(fixtures, "models", "tiny-bert-ce"), model_dir)
    config_file = os.path.join(model_dir, "config.json")
    config = json.load(open(config_file))
    for key in ["hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"]:
        config[key] = 0.0
    json.dump(config, open(config_file, "w"))
    torch.manual_seed(SETTINGS["seed"])
    model = CrossEncoder(model_dir, max_length=SETTINGS["max_length"], device="cpu")
    rows = run["train"]
    dataset = Dataset.from_list(rows)
    args = CrossEncoderTrainingArguments(
        output_dir=os.path.join(work, "out"),
        per_device_train_batch_size=len(rows),
        num_train_epochs=SETTINGS["steps"],
        learning_rate=SETTINGS["lr"],
        weight_decay=SETTINGS["weight_decay"],
        warmup_steps=SETTINGS["warmup_steps"],
        lr_scheduler_type=SETTINGS["lr_scheduler_type"],
        lr_scheduler_kwargs=SETTINGS["lr_scheduler_kwargs"],
        learning_rate_mapping=SETTINGS["learning_rate_mapping"],
        logging_steps=1,
        seed=SETTINGS["seed"],
        save_strategy="no",
        report_to="none",
        use_cpu=True,
    )
    callback = Losses()
    trainer = CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=BinaryCrossEntropyLoss(model),
        callbacks=[callback],
    )
    trainer.train()
    model.eval()
    logits = model.predict([tuple(p) for p in run["eval_pairs"]], activation_fn=torch.nn.Identity())
    out = {
        "meta": {
            "versions": {
                "sentence-transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
            },
            "how": "trajectories.json's tiny-bert-ce/bce run (dropout zeroed, one batch of every row "
            "per step, seed 12) with the settings below",
        },
        "settings": SETTINGS,
        "losses": callback.losses,
        "final_logits": [[float(x)] for x in logits],
    }
    json.dump(out, open(target, "w"), indent=1)
    print(f"{len(callback.losses)} steps -> {target}")


if __name__ == "__main__":
    main()
