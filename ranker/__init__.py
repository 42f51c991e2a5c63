"""Second stage: one multi-task ranking model over every content type, on TorchRec embedding tables."""
