"""The gRPC feed service. One GetFeed (`pipeline.FeedPipeline.get_feed`): candidate sources →
feature hydration (`hydration`) → ranker (`ranking`) → value model, blend and exploration (`mixing`)
→ page (`page`, `cursors`)."""
