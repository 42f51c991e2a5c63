"""The generative module: posts written for a user, grounded in retrieved items (issue: generation).

Only the interface lives here for now; the feed calls no generator until a real one exists.
"""

from generation.interface import GeneratedPost, PostGenerator, PostRequest

__all__ = ["GeneratedPost", "PostGenerator", "PostRequest"]
