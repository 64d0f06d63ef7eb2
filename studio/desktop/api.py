"""What the page may ask the desktop window for (pywebview's js_api): the system's file dialog. The chosen
path joins the session's allow-list (studio.security.PathPolicy): the person picked it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from slm_core.errors import SLMError


class DesktopApi:
    def __init__(self, paths: Any, dialog: Callable[[str, Sequence[str]], Optional[str]]):
        """`dialog(kind, file_types)` shows the dialog and returns the chosen path (None when cancelled)."""
        self._paths, self._dialog = paths, dialog

    def browse(self, kind: str = "file", file_types: Sequence[str] = ()) -> Optional[str]:
        chosen = self._dialog(kind, tuple(file_types))
        if not chosen:
            return None
        return self.choose(chosen, kind)

    def choose(self, chosen: str, kind: str = "file") -> Optional[str]:
        """Allow what the dialog returned: a folder itself, a file's folder (a model's or data's siblings are
        read with it); a path to save to: its folder."""
        path = Path(chosen).expanduser().resolve()
        folder = path if path.is_dir() else path.parent
        try:
            self._paths.allow(folder)
        except SLMError:
            return None  # the file system's root, or a folder that is gone: nothing to allow
        return str(path)


def pywebview_dialog(window: Any) -> Callable[[str, Sequence[str]], Optional[str]]:
    import webview

    kinds = {"file": webview.FileDialog.OPEN, "folder": webview.FileDialog.FOLDER, "save": webview.FileDialog.SAVE}

    def dialog(kind: str, file_types: Sequence[str]) -> Optional[str]:
        result = window.create_file_dialog(kinds[kind], file_types=tuple(file_types))
        if not result:
            return None
        return result if isinstance(result, str) else result[0]

    return dialog
