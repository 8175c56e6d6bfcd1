"""Golden cases for what the public set lacks: CrossEntropyLoss with probability labels
(float targets [B, C], with and without label smoothing and class weights) and the `*_kwargs`
keys of the case layout (bce_kwargs, ce_kwargs, mse_kwargs). Expectations come from torch
itself, in float64, exactly as sentence-transformers' losses call it: the reference's
CrossEntropyLoss is `torch.nn.CrossEntropyLoss(**kwargs)(activation_fn(logits), labels)`,
BinaryCrossEntropyLoss is `BCEWithLogitsLoss(pos_weight=..., **kwargs)` and MSELoss is
`torch.nn.MSELoss(**kwargs)` (LOSSES.md §1.1-1.3).

    python3 scripts/make-soft-label-cases.py > tests/fixtures/golden_losses_extra.json
"""

import json

import torch

torch.manual_seed(20)


def f32(values):
    """Rounded to float32, as crosstrain hands logits and labels to a loss."""
    return torch.tensor(values, dtype=torch.float32).to(torch.float64).tolist()


def case(case_id, loss, config, kind, logits, labels, compute):
    logits = torch.tensor(f32(logits), dtype=torch.float64, requires_grad=True)
    value = compute(logits)
    value.backward()
    rows = logits.shape[0]
    return {
        "id": case_id,
        "loss": loss,
        "config": config,
        "config_dict": None,
        "kind": kind,
        "batch_size": rows,
        "seed": 0,
        "logits": logits.detach().tolist(),
        "labels": labels,
        "scored_pairs": [[row, 0] for row in range(rows)],
        "expected_loss": value.item(),
        "expected_grad": logits.grad.tolist(),
        "notes": "torch " + torch.__version__ + ", float64",
    }


def probabilities(rows, classes):
    return f32(torch.softmax(torch.randn(rows, classes, dtype=torch.float64) * 2, dim=1).tolist())


cases = []
logits = (torch.randn(6, 3, dtype=torch.float64) * 2).tolist()
targets = probabilities(6, 3)
for number, (config, torch_kwargs, activation) in enumerate(
    [
        ({}, {}, None),
        ({"ce_kwargs": {"label_smoothing": 0.1}}, {"label_smoothing": 0.1}, None),
        (
            {"activation_fn": "tanh", "ce_kwargs": {"weight": [1.0, 2.0, 0.5], "reduction": "sum"}},
            {"weight": torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), "reduction": "sum"},
            torch.tanh,
        ),
        (
            {"ce_kwargs": {"weight": [0.5, 1.5, 1.0], "label_smoothing": 0.2}},
            {"weight": torch.tensor([0.5, 1.5, 1.0], dtype=torch.float64), "label_smoothing": 0.2},
            None,
        ),
    ],
    start=1,
):
    target = torch.tensor(targets, dtype=torch.float64)
    act = activation or (lambda x: x)
    cases.append(
        case(
            f"CrossEntropyLoss/probabilities/{number:02d}",
            "CrossEntropyLoss",
            config,
            "multiclass",
            logits,
            targets,
            lambda x, kw=torch_kwargs, act=act, target=target: torch.nn.CrossEntropyLoss(**kw)(act(x), target),
        )
    )

# Class ids with ce_kwargs (ignore_index, smoothing, weights) through the same mapping.
class_ids = [0, 2, 1, 1, 0, 2]
cases.append(
    case(
        "CrossEntropyLoss/kwargs/01",
        "CrossEntropyLoss",
        {"ce_kwargs": {"ignore_index": 1, "label_smoothing": 0.05}},
        "multiclass",
        logits,
        class_ids,
        lambda x: torch.nn.CrossEntropyLoss(ignore_index=1, label_smoothing=0.05)(
            x, torch.tensor(class_ids)
        ),
    )
)

pair_logits = (torch.randn(8, dtype=torch.float64) * 2).tolist()
binary = [1, 0, 1, 1, 0, 0, 1, 0]
cases.append(
    case(
        "BinaryCrossEntropyLoss/kwargs/01",
        "BinaryCrossEntropyLoss",
        {"pos_weight": 2.5, "bce_kwargs": {"reduction": "sum"}},
        "pair",
        pair_logits,
        binary,
        lambda x: torch.nn.BCEWithLogitsLoss(
            pos_weight=torch.tensor(2.5, dtype=torch.float64), reduction="sum"
        )(x, torch.tensor(binary, dtype=torch.float64)),
    )
)
scores = f32((torch.rand(8, dtype=torch.float64) * 3).tolist())
cases.append(
    case(
        "MSELoss/kwargs/01",
        "MSELoss",
        {"mse_kwargs": {"reduction": "sum"}},
        "pair",
        pair_logits,
        scores,
        lambda x: torch.nn.MSELoss(reduction="sum")(x, torch.tensor(scores, dtype=torch.float64)),
    )
)

print(
    json.dumps(
        {
            "meta": {
                "made_by": "scripts/make-soft-label-cases.py",
                "torch": torch.__version__,
                "n_cases": len(cases),
            },
            "cases": cases,
        },
        indent=1,
    )
)
