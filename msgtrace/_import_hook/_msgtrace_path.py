"""Import hook that lets msgtrace share the ``msgtrace`` package name with the msgtrace-sdk wheel.

Why: the msgtrace-sdk wheel (msgflux depends on it) ships its own top-level ``msgtrace`` package
(``msgtrace/__init__.py``, ``msgtrace/version.py``, ``msgtrace/sdk/``). Installed next to this distribution,
plain imports break in every install order:

* both regular: the two wheels unpack into the same ``site-packages/msgtrace/`` and whichever was installed
  last owns ``__init__.py`` (after the SDK's, ``msgtrace.open`` is gone and ``__version__`` is the SDK's);
* ``pip install -e`` of this project: hatchling's ``.pth`` *appends* the checkout to ``sys.path``, so the
  SDK's regular package in site-packages is found first and none of our modules are importable.

How: the wheel (regular and editable) ships this module at the site-packages root plus
``_msgtrace_path.pth``, whose ``import`` line runs :func:`install` at interpreter start-up. That puts
:class:`Finder` first on ``sys.meta_path``. On ``import msgtrace`` (and only then) it looks through
``sys.path`` for ``msgtrace/`` directories, picks the first that holds ``_package.py`` (ours; the SDK never
ships that file, so it survives the SDK overwriting ``__init__.py``), and returns a package spec that runs
``_package.py`` as the body of ``msgtrace`` with ``__path__`` = [our directory, every other ``msgtrace/``
directory after it]. Our submodules therefore win, while ``msgtrace.sdk`` and ``msgtrace.version`` resolve
to the SDK's files wherever they are. With no ``_package.py`` on ``sys.path`` (e.g. a partial uninstall) the
finder steps aside and the normal import system decides. Without the hook (``python -S``, a source
checkout on ``PYTHONPATH``) ``msgtrace/__init__.py`` does the same job with ``pkgutil.extend_path``.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import ModuleSpec, SourceFileLoader

PACKAGE = "msgtrace"
MARKER = "_package.py"  # present in our package directory only


class _PackageLoader(SourceFileLoader):
    """Loads ``msgtrace/_package.py`` as the package ``msgtrace`` itself."""

    def is_package(self, fullname: str) -> bool:
        return True


class Finder:
    """Meta-path finder for the top-level ``msgtrace`` package only; see the module docstring."""

    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname != PACKAGE or path is not None:
            return None
        ours: str | None = None
        others: list[str] = []
        seen: set[str] = set()
        for entry in sys.path:
            if not isinstance(entry, str):
                continue
            candidate = os.path.join(entry or os.getcwd(), PACKAGE)
            real = os.path.realpath(candidate)
            if real in seen or not os.path.isdir(candidate):
                continue
            seen.add(real)
            if ours is None and os.path.isfile(os.path.join(candidate, MARKER)):
                ours = candidate
            else:
                others.append(candidate)
        if ours is None:
            return None
        init = os.path.join(ours, MARKER)
        spec = ModuleSpec(PACKAGE, _PackageLoader(PACKAGE, init), origin=init, is_package=True)
        spec.submodule_search_locations = [ours, *others]
        spec.has_location = True
        spec.cached = _cached(init)
        return spec


def _cached(path: str) -> str | None:
    try:
        from importlib.util import cache_from_source

        return cache_from_source(path)
    except NotImplementedError:  # sys.implementation.cache_tag is None
        return None


def install() -> None:
    """Put :class:`Finder` first on ``sys.meta_path`` (idempotent); called from ``_msgtrace_path.pth``."""
    if Finder not in sys.meta_path:
        sys.meta_path.insert(0, Finder)
