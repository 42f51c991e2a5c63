"""What off-policy evaluation needs from an exploring arm: the whole ranking each session sampled.

An exploring arm (`serving.mixing.exploration`) samples one order of every eligible candidate per session
and serves it page by page. A served item's propensity is the logging policy's half of an
importance weight; the target policy's half, π(item at k | the items above), needs the scores of
every candidate that could have been placed there. So, at the first page of each such session,
the server logs the session's ranking (`feedcore.events.RANKING_SCHEMA`): every candidate in
the served order with its value score, its task predictions and its propensity, with the arm's
value weights and exploration settings. From it `evaluation.ope_log` recomputes the propensities of
any Plackett–Luce policy over value weights (another arm's, or a candidate's), and the page's
events (joined by the first page's request id) give the rewards.

The ranking comes with the first page itself (`FeedPage.session`: the pipeline pages the same
sampled order it serves), so logging it costs no second pass through the pipeline.
"""

from __future__ import annotations

from feedcore.events import now_ms
from serving.event_log import EventLog
from serving.page import FeedPage
from serving.pipeline import FeedRequest


def log_session_ranking(event_log: EventLog, request: FeedRequest, first: FeedPage,
                        request_id: str, weights: dict[str, float]) -> bool:
    """Log the ranking of the exploring session whose first page is `first` (served for `request`
    with value `weights`); False when there is none to log (no exploration, a degraded page)."""
    exploration, items = request.exploration, first.session
    if exploration is None or exploration.kind == "none" or not items or request.cursor:
        return False
    tasks = sorted(items[0].task_scores)
    event_log.append_ranking({
        "ts": now_ms(), "user_id": request.user_id, "request_id": request_id, "experiment_arm": request.arm,
        "surface": request.surface, "model_version": first.model_version, "exploration": exploration.kind,
        "temperature": exploration.temperature, "epsilon": exploration.epsilon, "depth": exploration.depth,
        "page_size": request.page_size, "weight_tasks": list(weights), "weights": [float(w) for w in weights.values()],
        "item_ids": [i.item_id for i in items], "values": [i.score for i in items],
        "propensities": [i.propensity for i in items], "tasks": tasks,
        "task_scores": [[i.task_scores.get(t, float("nan")) for i in items] for t in tasks],
    })
    return True
