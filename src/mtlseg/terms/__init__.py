"""Loss terms between tasks' outputs, by registry kind (``terms:`` in a recipe); importing
this package registers every term module in it."""

from mtlseg.registry import import_submodules
from mtlseg.terms.base import TERMS, Term, TermContext, build_terms

import_submodules(__name__)

__all__ = ["TERMS", "Term", "TermContext", "build_terms"]
