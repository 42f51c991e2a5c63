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
# # Quickstart: data in, a feed out
#
# Load the prepared data, train the models if they are not trained yet, start the real gRPC feed
# server on a free loopback port, ask it for a user's feed, and stop it. Run it from the repository
# root (`make test` executes it top to bottom on a small engine).

# %%
import grpc
import polars as pl
from IPython.display import display

from evaluation.simulator import train_engine
from feedcore.config import load_config
from feedcore.proto.feed.v1 import feed_pb2, feed_pb2_grpc
from feedcore.schemas import CanonicalDataset
from serving.client import wait_ready
from serving.pipeline import FeedPipeline
from serving.server import create_server

# %% tags=["parameters"]
CONFIG = "configs/demo.toml"  # any engine config; `make test` passes a small one
USER = ""  # empty: the most active user

# %%
config = load_config(CONFIG)
if not config.index_dir.exists():  # what `feed data prepare / train retrieval / train ranker / index build` do
    train_engine(config)

# %% [markdown]
# ## The data: canonical tables

# %%
data = CanonicalDataset.read(config.prepared_dir)
print(data.counts())
display(data.events.group_by("event").len().sort("len", descending=True))

# %%
display(data.items.head(5))

# %% [markdown]
# ## A running server and a feed

# %%
running = create_server(config.serving, FeedPipeline.from_artifacts(config))
running.server.start()
address = f"127.0.0.1:{running.port}"
user = USER or data.events.group_by("user_id").len().sort("len", "user_id", descending=[True, False])["user_id"][0]

with grpc.insecure_channel(address) as channel:
    wait_ready(channel)
    response = feed_pb2_grpc.FeedServiceStub(channel).GetFeed(
        feed_pb2.GetFeedRequest(user_id=user, page_size=10), timeout=30)
running.server.stop(2).wait()

feed = pl.DataFrame([{"position": i.position, "type": i.content_type, "score": round(i.score, 3),
                      **{t: round(v, 3) for t, v in sorted(i.task_scores.items())}, "source": i.source,
                      "title": i.title} for i in response.items])
print(f"user {user}, arm {response.experiment_arm}, model {response.model_version}")
display(feed)

# %%
assert feed.height == 10 and feed["score"].is_sorted(descending=True)
