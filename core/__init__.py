"""proxistore: a durable, embeddable vector store built as a plugin framework.

    import proxistore
    with proxistore.open("./data") as db:
        docs = db.create_collection("docs", dim=384, metric="cosine")
        docs.insert(ids, vectors, metadata)
        hits = docs.search(query, k=10, filter={"module": "json"})
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Union

from . import errors
from .collection import Collection, Hit, Record
from .database import Database
from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["open", "Database", "Collection", "Hit", "Record", "hookimpl", "errors", "__version__"]


def open(path: Union[str, "os.PathLike[str]"],
         config: Union[None, str, "os.PathLike[str]", Mapping[str, Any]] = None, **kwargs: Any) -> Database:
    """Open (or create) the database in directory ``path``.

    ``config`` is a TOML file path, a dict of overrides on top of the defaults (the same shape as
    the file), or None for the defaults. Everything acknowledged before is back once this returns.
    """
    return Database(path, config, **kwargs)
