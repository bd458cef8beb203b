"""Serving: answer many questions over documents compressed once.

`Engine` (engine.py) owns the model, the document store (store.py), the LRU cache of projected
memories (lru.py) and the batcher (batcher.py); `create_app` (app.py) puts an OpenAI-compatible
HTTP API in front of it.
"""
from .engine import Engine, EngineSettings

__all__ = ["Engine", "EngineSettings"]
