"""proxistore: a durable, embeddable vector store built as a plugin framework."""
from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
