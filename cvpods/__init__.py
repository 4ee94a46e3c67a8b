"""cvpods-dynamichead: a cvpods-style detection framework for the Fine-Grained Dynamic Head."""

from ._extension import extension_available

__version__ = "0.1.0"

__all__ = ["__version__", "extension_available"]
