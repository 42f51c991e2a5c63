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
# # A/B analysis and off-policy evaluation
#
# 1. An A/B test on a **synthetic** event log with a planted +10% click lift (`evaluation.synthetic`):
#    delta-method CTR, CUPED, the sample-ratio check, guardrails and the report's figures.
# 2. The same log with a planted sample-ratio mismatch (10% of one arm's users lost).
# 3. Off-policy evaluation on synthetic ranked pages from a known Plackett–Luce logging policy:
#    IPS, SNIPS and doubly robust against the true value of a target policy.
# 4. The committed end-to-end **simulated** A/B run (`examples/ab-report`, `feed ab simulate`).

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

from evaluation.ab import ABConfig, ab_figures, ab_markdown, analyze
from evaluation.ope import doubly_robust, ips, plackett_luce_conditionals, policy_inputs, snips
from evaluation.report import figure_png
from evaluation.synthetic import PlantedAB, planted_ab_log, planted_ranking_logs
from serving.experiments import Arm, Experiment

# %% tags=["parameters"]
USERS = 10_000
EXAMPLE_REPORT = "examples/ab-report"

# %%
arms = (("control", 0.5), ("treatment", 0.5))
experiment = Experiment("planted", "s", tuple(Arm(a, s) for a, s in arms))
plan = PlantedAB(arms=arms, users=USERS, click_lift={"treatment": 0.10}, seed=1)
log = planted_ab_log(plan, lambda u: experiment.assign(u).name)
display(log.group_by("event").len())

# %%
analysis = analyze(log, ABConfig("planted", arms, start_ms=plan.start_ms))
display(Markdown(ab_markdown(analysis, title="Synthetic log, planted +10% click lift", figures=())))
figures = ab_figures(analysis)
display(Image(data=figure_png(figures["lifts"])), Image(data=figure_png(figures["arms"])))

# %% [markdown]
# ## A broken split: 10% of the treatment's users never logged

# %%
broken = PlantedAB(arms=arms, users=USERS, lost_users={"treatment": 0.10}, seed=3)
srm = analyze(planted_ab_log(broken, lambda u: experiment.assign(u).name), ABConfig("planted", arms,
                                                                                    start_ms=broken.start_ms))
print(ab_markdown(srm).splitlines()[2])
display(Image(data=figure_png(ab_figures(srm)["srm"])))

# %% [markdown]
# ## Off-policy evaluation against a known truth

# %%
logs = planted_ranking_logs(requests=3000, candidates=8, positions=3, temperature=1.0, seed=0)
rng = np.random.default_rng(7)
target_scores = np.log(logs.click_prob[:, :, 0] + 1e-3) + rng.normal(0, 0.2, logs.scores.shape)
conditionals = plackett_luce_conditionals(target_scores, logs.order, 0.5)
target, q_logged, v_target = policy_inputs(conditionals, logs.order, logs.click_prob)
noise = np.random.default_rng(8).gumbel(size=(300, *target_scores.shape))
tops = np.argsort(-(target_scores[None] / 0.5 + noise), axis=2)[:, :, :3]
r, k = np.arange(len(target_scores))[None, :, None], np.arange(3)[None, None, :]
truth = logs.click_prob[r, tops, k].sum(axis=2).mean()
estimates = [ips(logs.reward, target, logs.propensity), snips(logs.reward, target, logs.propensity),
             doubly_robust(logs.reward, target, logs.propensity, q_logged, v_target),
             ips(logs.reward, target, logs.propensity, clip=5.0)]
fig, ax = plt.subplots(figsize=(6, 2.8))
for y, e in enumerate(estimates):
    ax.errorbar(e.value, y, xerr=[[e.value - e.ci_low], [e.ci_high - e.value]], fmt="o", capsize=3)
ax.axvline(truth, color="green", label=f"true target value {truth:.3f}")
ax.axvline(logs.reward.sum(axis=1).mean(), color="gray", ls="--", label="logging policy (on-policy)")
ax.set_yticks(range(len(estimates)), ["IPS", "SNIPS", "DR", "IPS clipped at 5"])
ax.set_xlabel("clicks per page (top 3), 95% CI")
ax.legend(fontsize=7)
fig.tight_layout()
for e in estimates:
    print(f"{e.estimator:6s} {e.value:.4f}  95% CI [{e.ci_low:.4f}, {e.ci_high:.4f}]  effective pages "
          f"{e.effective_pages:.0f} of {e.pages}, clipped {e.clipped_share:.1%}")
print(f"truth  {truth:.4f}")

# %% [markdown]
# ## The committed simulated A/B run (simulated users, not people)

# %%
report = Path(EXAMPLE_REPORT)
if (report / "report.md").exists():
    display(Markdown("\n".join((report / "report.md").read_text().splitlines()[:12])))
    display(Image(filename=str(report / "lifts.png")))
else:
    print(f"no example report at {report}: run `feed ab simulate` to make one")

# %%
assert analysis.srm.flagged is False and srm.srm.flagged is True
assert all(abs(e.value - truth) < 3 * e.se for e in estimates[:3])  # unbiased estimators, within 3 SE
