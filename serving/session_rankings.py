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

The rest of the order comes from the pipeline itself: the first page's cursor asks it for the
following positions of the same session, which it ranks and samples again from the same seed
(the session's start, in the cursor), so they are the positions the client would page through.
That reruns the pipeline once per exploring session; a page that carried its candidates' scores
would save it.
"""

from __future__ import annotations

import dataclasses
import logging

from feedcore.events import now_ms
from serving.cursors import CursorError
from serving.event_log import EventLog
from serving.page import FeedPage
from serving.pipeline import FeedPipeline, FeedRequest

logger = logging.getLogger(__name__)

REST_OF_SESSION = 100_000  # page size of the one call that fetches every later position


def session_ranking(pipeline: FeedPipeline, request: FeedRequest, first: FeedPage) -> FeedPage | None:
    """The whole ranking of the session `first` opened: its items and every later position's, in
    order; None when it cannot be had exactly (a degraded page, or a model reloaded meanwhile)."""
    items, cursor = list(first.items), first.next_cursor
    try:
        while cursor:
            page = pipeline.get_feed(dataclasses.replace(request, cursor=cursor, page_size=REST_OF_SESSION))
            if page.degraded or page.model_version != first.model_version:
                return None
            items += page.items
            cursor = page.next_cursor
    except CursorError:  # the model changed between the two calls
        return None
    return dataclasses.replace(first, items=items, next_cursor="")


def log_session_ranking(event_log: EventLog, pipeline: FeedPipeline, request: FeedRequest, first: FeedPage,
                        request_id: str, weights: dict[str, float]) -> bool:
    """Log the ranking of the exploring session whose first page is `first` (served for `request`
    with value `weights`); False when there is none to log (no exploration, a degraded page)."""
    exploration = request.exploration
    if exploration is None or exploration.kind == "none" or first.degraded or not first.items or request.cursor:
        return False
    ranking = session_ranking(pipeline, request, first)
    if ranking is None:
        logger.info("session ranking of %s not logged: the pipeline changed or degraded", request_id)
        return False
    items = ranking.items
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
