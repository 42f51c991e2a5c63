# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training and evaluation: loss curves, full-ranking metrics, calibration
#
# Train both models of an engine config, plot the per-epoch training losses (read from the
# training jobs' own log records), then score the held-out test users: the full-ranking hit rate
# as a function of K and the ranker's reliability diagram.

# %%
import dataclasses
import logging

import matplotlib.pyplot as plt
import numpy as np

from evaluation.compare import CompareConfig, held_out_data, ranker_held_out, score_engine
from feedcore.config import load_config
from feedcore.metrics import calibration_bins, expected_calibration_error, ndcg_gains
from feedcore.prepare import prepare_data
from ranker.train import train_ranker_job
from retrieval.train import train_retrieval_job

# %% tags=["parameters"]
CONFIG = "configs/demo.toml"
ARTIFACTS_DIR = "artifacts/notebook-train-eval"  # trained into here (the config's own is left alone)

# %%
config = dataclasses.replace(load_config(CONFIG), artifacts_dir=ARTIFACTS_DIR)


class EpochLosses(logging.Handler):
    """Keeps the (epoch, loss) of the training jobs' per-epoch log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.losses: dict[str, list[tuple[int, float]]] = {"retrieval": [], "ranker": []}

    def emit(self, record: logging.LogRecord) -> None:
        for model in self.losses:
            if record.msg.startswith(f"{model} epoch %d: loss"):  # not the validation lines
                self.losses[model].append((int(record.args[0]), float(record.args[1])))


losses = EpochLosses()
for name in ("retrieval.train", "ranker.train"):
    logging.getLogger(name).addHandler(losses)
    logging.getLogger(name).setLevel(logging.INFO)

prepare_data(config)
_, retrieval_metrics = train_retrieval_job(config, progress=False)
_, ranker_metrics = train_ranker_job(config, progress=False)
for model, metrics in (("retrieval", retrieval_metrics), ("ranker", ranker_metrics)):
    print(f"{model} (valid):", {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, (model, points) in zip(axes, losses.losses.items(), strict=True):
    ax.plot([e for e, _ in points], [v for _, v in points], "o-")
    ax.set_title(f"{model} training loss")
    ax.set_xlabel("epoch")
fig.tight_layout()

# %% [markdown]
# ## Held-out test users: full ranking and calibration

# %%
compare = CompareConfig(split="test")
inputs, history, heldout, label_events = held_out_data(config, compare)
ranker_examples = ranker_held_out(config, history, heldout, label_events, compare)
examples = ranker_examples.examples
scores = score_engine("trained", config, inputs, history, heldout, ranker_examples)

ks = np.arange(1, 201)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(ks, [(scores.ranks < k).mean() for k in ks], label="HR@K")
axes[0].plot(ks, [ndcg_gains(scores.ranks, k).mean() for k in ks], label="NDCG@K")
axes[0].set_xlabel("K")
axes[0].set_title(f"full ranking, {len(scores.ranks)} test users")
axes[0].legend()
for j, task in enumerate(config.ranker.tasks):
    labels, preds = examples.labels[:, j], scores.predictions[task.name]
    live = ~np.isnan(labels)
    weight, mean_pred, observed = calibration_bins(labels[live], preds[live])
    ece = expected_calibration_error(labels[live], preds[live])
    axes[1].plot(mean_pred[weight > 0], observed[weight > 0], "o-", label=f"{task.name} (ECE {ece:.3f})")
axes[1].plot([0, 1], [0, 1], "k--", lw=0.8)
axes[1].set_xlabel("mean prediction")
axes[1].set_ylabel("observed rate")
axes[1].set_title("ranker reliability (test, 2 negatives per positive)")
axes[1].legend(fontsize=8)
fig.tight_layout()

# %%
assert len(losses.losses["retrieval"]) == config.retrieval.epochs and (scores.ranks < 200).mean() > 0
