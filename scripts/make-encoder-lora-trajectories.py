"""Makes tests/fixtures/trajectories_encoder_lora.json and the starting adapters beside it
(tests/fixtures/models/tiny-*-lora-init/): sentence-transformers' CrossEncoderTrainer training
a PEFT LoRA adapter on each tiny encoder fixture, per-step losses and final raw logits, for
`crosstrain train --model ADAPTER --base-model BASE` to reproduce (tests/train.rs).

The runs take the data and settings of the encoder runs in trajectories.json (whole training
set per step, dropout 0, warm-up, weight decay, clipping) with LoRA r 4, alpha 8, both A and B
drawn (init_lora_weights=False, so both get gradients from step 1), lr 5e-3, and a spread of
target choices: PEFT's per-family default, "all-linear" (which on a CrossEncoder includes the
classifier), named layers, and modules_to_save.

Usage (sentence-transformers 6.3, transformers 5.25, peft 0.21):
    python scripts/make-encoder-lora-trajectories.py
"""
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
import transformers.integrations.peft as transformers_peft
from datasets import Dataset
from peft import LoraConfig
import peft
import sentence_transformers
from safetensors import safe_open
from sentence_transformers.cross_encoder import (
    CrossEncoder,
    CrossEncoderTrainer,
    CrossEncoderTrainingArguments,
)
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

# transformers 5.25 asks for peft >= 0.22, which the package index does not have yet; the
# adapter code paths used here are unchanged.
transformers_peft.check_peft_version = lambda min_version: None

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DROPOUT_KEYS = [
    "attention_dropout", "attention_probs_dropout_prob", "classifier_dropout",
    "embedding_dropout", "hidden_dropout", "hidden_dropout_prob", "mlp_dropout",
    "pooler_dropout", "summary_last_dropout",
]
# (model, target_modules, modules_to_save)
RUNS = [
    ("tiny-bert-ce", "all-linear", None),
    ("tiny-xlmr-ce", None, ["classifier"]),
    ("tiny-electra-ce", "all-linear", None),
    ("tiny-modernbert-ce", ["Wqkv", "Wo"], ["head", "classifier"]),
    ("tiny-deberta-v2-ce", None, ["classifier", "pooler"]),
]
STEPS, LR, RANK, ALPHA = 8, 5e-3, 4, 8


def main():
    encoder_runs = json.loads((FIXTURES / "trajectories.json").read_text())["runs"]
    out = {
        "meta": {
            "versions": {
                "sentence-transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
            },
            "how": (
                "scripts/make-encoder-lora-trajectories.py: CrossEncoderTrainer on a copy of the "
                "model with every dropout 0, model.add_adapter(LoraConfig(r=4, lora_alpha=8, "
                "lora_dropout=0, init_lora_weights=False, ...)) after torch.manual_seed(3), the "
                "starting adapter saved with save_pretrained; one batch per step (the whole "
                "training set), linear schedule with 2 warm-up steps, AdamW, weight decay 0.01, "
                "clipping 1.0, seed 12. losses[k] is the loss logged at step k+1; final_logits "
                "the raw logits of eval_pairs after training."
            ),
        },
        "runs": {},
    }
    for name, targets, saves in RUNS:
        reference = encoder_runs[f"{name}/bce"]
        settings = dict(reference["settings"], steps=STEPS, lr=LR)
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp) / name
            shutil.copytree(FIXTURES / "models" / name, base)
            config = json.loads((base / "config.json").read_text())
            for key in DROPOUT_KEYS:
                if key in config or key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
                    config[key] = 0.0
            (base / "config.json").write_text(json.dumps(config, indent=2))
            torch.manual_seed(3)
            model = CrossEncoder(str(base), max_length=settings["max_length"], device="cpu")
            lora = LoraConfig(
                r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets,
                modules_to_save=saves, init_lora_weights=False,
            )
            model.add_adapter(lora)
            initial = FIXTURES / "models" / f"{name}-lora-init"
            if initial.exists():
                shutil.rmtree(initial)
            model.save_pretrained(str(initial))
            # The base is the fixture beside the adapter (PEFT wrote the temporary copy's
            # path), and the card names that temporary path too.
            adapter_config = json.loads((initial / "adapter_config.json").read_text())
            adapter_config["base_model_name_or_path"] = name
            (initial / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
            (initial / "README.md").unlink(missing_ok=True)
            with safe_open(str(initial / "adapter_model.safetensors"), "pt") as f:
                tensors = {k: list(f.get_tensor(k).shape) for k in f.keys()}
            initial_logits = model.predict(
                [tuple(p) for p in reference["eval_pairs"]],
                activation_fn=torch.nn.Identity(), convert_to_numpy=True,
            ).reshape(len(reference["eval_pairs"]), -1).tolist()
            train = Dataset.from_list(reference["train"])
            args = CrossEncoderTrainingArguments(
                output_dir=str(Path(tmp) / "out"),
                per_device_train_batch_size=len(reference["train"]),
                num_train_epochs=STEPS,
                learning_rate=LR,
                weight_decay=settings["weight_decay"],
                warmup_steps=round(settings["warmup_ratio"] * STEPS),
                lr_scheduler_type="linear",
                max_grad_norm=1.0,
                logging_steps=1,
                seed=12,
                save_strategy="no",
                report_to=[],
                use_cpu=True,
            )
            trainer = CrossEncoderTrainer(
                model=model, args=args, train_dataset=train,
                loss=BinaryCrossEntropyLoss(model),
            )
            trainer.train()
            losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
            assert len(losses) == STEPS, losses
            final_logits = model.predict(
                [tuple(p) for p in reference["eval_pairs"]],
                activation_fn=torch.nn.Identity(), convert_to_numpy=True,
            ).reshape(len(reference["eval_pairs"]), -1).tolist()
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        digest = hashlib.sha256((initial / "adapter_model.safetensors").read_bytes()).hexdigest()
        out["runs"][f"{name}/lora"] = {
            "model": f"models/{name}",
            "loss": "BinaryCrossEntropyLoss",
            "train": reference["train"],
            "eval_pairs": reference["eval_pairs"],
            "settings": settings,
            "lora": {
                "config": {"r": RANK, "lora_alpha": ALPHA, "target_modules": targets,
                           "modules_to_save": saves, "init_lora_weights": False},
                "initial_adapter": f"models/{name}-lora-init",
                "initial_adapter_sha256": digest,
                "tensors": tensors,
            },
            "num_trainable": trainable,
            "initial_logits": initial_logits,
            "losses": losses,
            "final_logits": final_logits,
        }
        print(name, "losses", [round(x, 5) for x in losses], "trainable", trainable, file=sys.stderr)
    path = FIXTURES / "trajectories_encoder_lora.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path, file=sys.stderr)


if __name__ == "__main__":
    main()
