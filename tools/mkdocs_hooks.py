"""MkDocs hooks for the revlens site (``mkdocs.yml``: ``hooks: [tools/mkdocs_hooks.py]``).

What they generate at build time, so the site cannot drift from the code:

- ``reference/api/<module>.md``: one page per public module, an entry for every name in that
  module's ``__all__`` (mkdocstrings renders its docstring). New names and new public subpackages
  appear without editing ``mkdocs.yml``: the pages are added to the nav under "Reference › API".
- ``reference/cli.md``: ``revlens --help`` and every sub-command's ``--help``, captured from the
  parser the console script builds (plugins' commands included).
- ``changelog.md``: ``CHANGELOG.md`` from the repository root.
- a short placeholder for each page named in ``PLACEHOLDERS`` that is not in ``docs/`` yet (pages
  other branches add), so ``mkdocs build --strict`` never fails on a missing nav entry.

Rendering: notebooks run with the tutorials' small settings and plotly's ``sphinx_gallery``
renderer (a plain ``<div>`` + ``Plotly.newPlot``); pages holding a figure get the plotly.js shipped
in the plotly package, and the figure HTML's CDN ``<script>`` tags (MathJax, plotly) are dropped,
so the site works offline. Relative links from a page to a file of the repository outside
``docs/`` (``../benchmarks/bench_memory.py``) point at the repository's source view instead.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import os
import posixpath
import re
import shutil
import sys
from contextlib import redirect_stdout
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "revlens"
API_DIR = "reference/api"
PLACEHOLDERS = {
    "datasets.md": "Datasets",
    "real_models.md": "Real models",
    "generation.md": "Generation",
    "reliability.md": "Reliability",
}
_ENV = {
    "PLOTLY_RENDERER": "sphinx_gallery",  # figures as <div> + Plotly.newPlot, plotly.js added below
    "REVLENS_TUTORIAL_SMALL": "1",
    "OMP_NUM_THREADS": "1",
    "TQDM_DISABLE": "1",
    "HF_HUB_OFFLINE": "1",
    "COLUMNS": "100",
}
_CDN_SCRIPT = re.compile(
    r'<script[^>]*\bsrc="https?://[^"]*(?:mathjax|plot\.ly|plotly)[^"]*"[^>]*>\s*</script>'
)
_LINK = re.compile(r"(?<!\!)\[([^\]]*)\]\((?!https?:|mailto:|#|/)([^)\s]+)\)")


def public_modules() -> list[str]:
    """``revlens`` and every public module or package directly under it that declares ``__all__``."""
    names = [PACKAGE]
    for path in sorted((ROOT / PACKAGE).iterdir()):
        if path.name.startswith("_"):
            continue
        source = path / "__init__.py" if path.is_dir() else path
        if source.suffix != ".py" or not source.is_file():
            continue
        if _declares_all(source):
            names.append(f"{PACKAGE}.{path.stem}")
    return names


def _declares_all(source: Path) -> bool:
    tree = ast.parse(source.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
               for node in tree.body)  # fmt: skip


def object_path(module: str, name: str) -> str:
    """The dotted path mkdocstrings documents ``module.name`` under (where it is defined)."""
    obj = getattr(importlib.import_module(module), name)
    if inspect.ismodule(obj) and inspect.isfunction(getattr(obj, name, None)):
        obj = getattr(obj, name)  # a callable module (``revlens.analyze``): its function
    if inspect.isclass(obj) or inspect.isfunction(obj):
        where = getattr(obj, "__module__", "") or ""
        qual = getattr(obj, "__qualname__", name)
        if where.split(".")[0] == PACKAGE and "<" not in qual:
            return f"{where}.{qual}"
    return f"{module}.{name}"


def api_plan() -> dict[str, list[tuple[str, str, str | None]]]:
    """Per public module, its ``__all__`` as ``(name, object path, page that documents it)``.

    An object is documented once, on the first module page that exports it (subpackages before
    ``revlens`` itself); other pages that re-export it link there (``None``: documented here).
    """
    modules = public_modules()
    order = [*modules[1:], modules[0]]
    home: dict[str, str] = {}
    plan: dict[str, list[tuple[str, str, str | None]]] = {}
    for module in order:
        rows = []
        for name in importlib.import_module(module).__all__:
            path = object_path(module, name)
            rows.append((name, path, home.get(path)))
            home.setdefault(path, module)
        plan[module] = rows
    return {m: plan[m] for m in modules}


def api_page(module: str, rows: list[tuple[str, str, str | None]]) -> str:
    """Markdown for one module's reference page: its docstring, then every ``__all__`` name."""
    lines = [f"# `{module}`", "", f"::: {module}", "    options:", "      members: false",
             "      show_root_heading: false", "      show_root_toc_entry: false", ""]  # fmt: skip
    elsewhere = [(n, p, h) for n, p, h in rows if h is not None]
    if elsewhere:
        lines += [f"Names `{module}` re-exports, documented on their own module's page:", "",
                  "| name | documented at |", "|---|---|"]  # fmt: skip
        # each row carries an anchor of the public name (aliases such as
        # ``ReversionBlockerCallback = BlockingCallback`` included)
        lines += [
            f'| <span id="{module}.{n}"></span>`{module}.{n}` | [`{p}`]({h}.md#{p}) |'
            for n, p, h in elsewhere
        ]
        lines.append("")
    for name, path, home in rows:
        if home is None:
            lines += [f"::: {path}", "    options:", f"      heading: {name}", ""]
    return "\n".join(lines)


def cli_page() -> str:
    """``revlens --help`` and each sub-command's ``--help``, as the installed console script prints them."""
    from revlens.cli import build_parser

    parser = build_parser()
    out = ["# Command line", "", "Captured from `revlens --help` when this site was built "
           "(`revlens.cli.build_parser`, plugins' commands included).", "",
           "```text", parser.format_help().rstrip(), "```", ""]  # fmt: skip
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        out += [f"## `revlens {name}`", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _generated(config, uri: str, content: str) -> File:
    return File.generated(config, uri, content=content)


def on_config(config):
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    api = [{m: f"{API_DIR}/{m}.md"} for m in public_modules()]
    for section in config.nav or []:
        if isinstance(section, dict) and "Reference" in section:
            section["Reference"].insert(1, {"API": api})
    return config


def on_files(files, config):
    with redirect_stdout(io.StringIO()):
        for module, rows in api_plan().items():
            files.append(_generated(config, f"{API_DIR}/{module}.md", api_page(module, rows)))
        files.append(_generated(config, "reference/cli.md", cli_page()))
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    files.append(_generated(config, "changelog.md", changelog))
    for uri, title in PLACEHOLDERS.items():
        if files.get_file_from_path(uri) is None:
            files.append(
                _generated(
                    config,
                    uri,
                    f"# {title}\n\nThis page is being written on another "
                    "branch; it replaces this placeholder when merged.\n",
                )
            )
    return files


def result_formats() -> str:
    """The saved-result formats ``revlens.load`` opens, from ``revlens._RESULTS``, with each
    format's module docstring (which lists its files)."""
    import revlens

    rows = ["| metadata file | format | class |", "|---|---|---|"]
    docs = []
    for meta, target in revlens._RESULTS.items():
        module, name = target.split(":")
        mod = importlib.import_module(module)
        fmt = getattr(getattr(mod, name), "FORMAT", None) or getattr(mod, "STATS_FORMAT", name)
        rows.append(f"| `{meta}` | `{fmt}` | [`{name}`][{module}.{name}] |")
        docs += [
            f"## `{fmt}` ({name})",
            "",
            f"::: {module}",
            "    options:",
            "      members: false",
            "      show_root_heading: false",
            "      show_root_toc_entry: false",
            "",
        ]
    rows += [
        "| `history.json` | `revlens-history` | [`History`][revlens.history.history.History] |",
        "",
    ]
    return "\n".join(rows + docs)


def on_page_markdown(markdown, page, config, files):
    """Fill generated sections; point relative links to repository files outside ``docs/`` at
    the source view."""
    if "<!-- result-formats -->" in markdown:
        markdown = markdown.replace("<!-- result-formats -->", result_formats())
    repo = (config.get("extra") or {}).get("source_url")
    if not repo or page.file.generated_by or not page.file.src_uri.endswith(".md"):
        return markdown
    docs = Path(config.docs_dir).resolve()
    src = (docs / page.file.src_uri).parent

    def fix(m: re.Match) -> str:
        target, _, anchor = m.group(2).partition("#")
        resolved = Path(posixpath.normpath((src / target).as_posix()))
        try:
            resolved.relative_to(docs)
            return m.group(0)
        except ValueError:
            pass
        if not resolved.exists():
            return m.group(0)  # left for the strict link check to report
        rel = resolved.relative_to(ROOT).as_posix()
        kind = "tree" if resolved.is_dir() else "blob"
        return (
            f"[{m.group(1)}]({repo.rstrip('/')}/{kind}/main/{rel}{'#' + anchor if anchor else ''})"
        )

    return _LINK.sub(fix, markdown)


def on_post_page(output, page, config):
    """Pages with a plotly figure load the local plotly.js and no CDN script."""
    if "plotly-graph-div" not in output:
        return output
    output = _CDN_SCRIPT.sub("", output)
    prefix = "../" * page.url.count("/")
    tag = f'<script src="{prefix}assets/javascripts/plotly.min.js"></script>'
    return output.replace("</head>", f"{tag}\n</head>", 1)


def on_post_build(config):
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = Path(config.site_dir) / "assets" / "javascripts" / "plotly.min.js"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
