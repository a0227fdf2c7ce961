"""Analysis reports: :class:`Report` (tables, save/load); HTML in :mod:`revlens.report.html`."""

from revlens.report.report import Report

__all__ = ["Report"]
