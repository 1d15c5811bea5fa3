"""Hatch build hook: editable wheels get only the import hook, not a copy of ``sql/``.

The regular wheel force-includes ``sql/`` as ``msgtrace/sql`` plus the ``_msgtrace_path`` hook (see
``msgtrace/_import_hook/_msgtrace_path.py``). An editable install reads ``sql/`` from the checkout, so copying it would
only leave a stale ``site-packages/msgtrace/`` directory behind; the hook files are still needed there.
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class EditableHookOnly(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            build_data["force_include_editable"] = {
                "msgtrace/_import_hook/_msgtrace_path.py": "_msgtrace_path.py",
                "msgtrace/_import_hook/_msgtrace_path.pth": "_msgtrace_path.pth",
            }
