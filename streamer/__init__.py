"""streamer: real-time machine-learning embeddings of astronomical alert streams."""

__version__ = "0.1.0"
