"""First stage: a two-tower model (user tower over the history, content-aware item tower) and faiss."""
