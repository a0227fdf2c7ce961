"""The result protocol every revlens result follows.

A result is a small object of tables (pandas DataFrames), directions and plain metadata that

- **saves atomically** (:meth:`Result.save`): written into a fresh directory that replaces the
  target only when complete, with a manifest of every file; :meth:`Result.load` refuses an
  incomplete or altered directory and names the file;
- **draws itself**: named figure methods (``report.heatmap()``...) return plotly figures, and
  in a notebook the result displays its summary and its main figure;
- opens with :func:`revlens.load`, whatever its type (the ``format`` field says which).
"""

import html
from pathlib import Path
from typing import Any, ClassVar

from revlens._io import check_manifest, publish_dir, read_json, write_json
from revlens.errors import ConfigError, RevlensError

__all__ = ["Result"]


class Result:
    """Base class of saved results (see the module docstring).

    Subclasses set ``FORMAT`` (e.g. ``"revlens-report/2"``) and ``META`` (the JSON file holding
    the metadata, e.g. ``"report.json"``) and implement :meth:`_write` / :meth:`_read`; the main
    figure is :meth:`_main_figure`.
    """

    FORMAT: ClassVar[str] = "revlens-result/1"
    META: ClassVar[str] = "result.json"

    # ------------------------------------------------------------------ to implement
    def _write(self, directory: Path) -> dict[str, Any]:
        """Write tables and tensors into ``directory``; return the metadata to store."""
        raise NotImplementedError

    @classmethod
    def _read(cls, directory: Path, meta: dict[str, Any]) -> "Result":
        raise NotImplementedError

    def _main_figure(self) -> Any:
        return None

    # ------------------------------------------------------------------ protocol
    def save(self, directory: Any) -> Path:
        """Write the result to ``directory`` atomically (replacing an earlier one only when the new
        one is complete); returns its path."""
        with publish_dir(directory) as tmp:
            meta = self._write(tmp)
            write_json(tmp / self.META, {"format": self.FORMAT, **meta})
        return Path(directory)

    @classmethod
    def load(cls, directory: Any) -> "Result":
        """Inverse of :meth:`save`.

        Raises:
            ConfigError: ``directory`` holds no such result, one of another format, or an
                incomplete / altered one (the file is named).
        """
        d = Path(directory)
        if not (d / cls.META).is_file():
            raise ConfigError(f"{d} holds no saved {cls.__name__} ({cls.META})")
        check_manifest(d, f"saved {cls.__name__}")
        meta = read_json(d / cls.META, f"saved {cls.__name__}")
        if not isinstance(meta, dict) or meta.get("format") != cls.FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else None
            raise ConfigError(f"{d / cls.META} has format {got!r}; expected {cls.FORMAT!r}")
        return cls._read(d, meta)

    def _ipython_display_(self) -> None:  # pragma: no cover - exercised in the notebooks
        from IPython.display import HTML, display

        display(HTML(f"<pre>{html.escape(repr(self))}</pre>"))
        try:
            fig = self._main_figure()
        except RevlensError:  # nothing to draw (e.g. an empty table): the summary is enough
            fig = None
        if fig is not None:
            display(fig)
