"""The annotator and admin web pages: Jinja2 templates, static scripts and styles, vendor libraries.

KaTeX and Chart.js come from npm (``npm ci --prefix webui`` installs them into
``webui/node_modules``); nothing of theirs is copied into the repository. The annotation
service serves the files listed in ``VENDOR_FILES`` from there.
"""

from __future__ import annotations

from pathlib import Path

WEBUI_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = WEBUI_DIR / "templates"
STATIC_DIR = WEBUI_DIR / "static"
NODE_MODULES = WEBUI_DIR / "node_modules"

# Library name → its distribution folder inside node_modules (the only folder served for it).
VENDOR_DIST = {"katex": Path("katex") / "dist", "chart.js": Path("chart.js") / "dist"}

# The files each page loads, relative to the library's dist folder.
VENDOR_FILES = {
    "katex": ("katex.min.css", "katex.min.js", "contrib/auto-render.min.js"),
    "chart.js": ("chart.umd.min.js",),
}

INSTALL_HINT = "npm ci --prefix webui"


def vendor_root(library: str, node_modules: Path | None = None) -> Path:
    """The dist folder of an npm library the pages use (it may not exist yet)."""
    return (node_modules or NODE_MODULES) / VENDOR_DIST[library]


def missing_vendor(node_modules: Path | None = None) -> list[str]:
    """Libraries whose files are not installed, in a stable order."""
    return [name for name, files in VENDOR_FILES.items()
            if not all((vendor_root(name, node_modules) / f).is_file() for f in files)]


def resolve_vendor_file(library: str, relative: str, node_modules: Path | None = None) -> Path | None:
    """The file ``relative`` inside a library's dist folder, or None (unknown library, a path that
    leaves the folder, or a file that is not there)."""
    if library not in VENDOR_DIST:
        return None
    root = vendor_root(library, node_modules).resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate
