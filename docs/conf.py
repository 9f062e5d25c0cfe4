"""Sphinx configuration for daskgen's documentation.

Build (warnings are errors, as in tox's ``docs`` env)::

    sphinx-build -W -b html docs docs/_build/html
"""

from __future__ import annotations

import daskgen

project = "daskgen"
author = "the daskgen developers"
copyright = "daskgen developers"
release = daskgen.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Cross-reference Markdown section headings as [text](page.md#anchor).
myst_heading_anchors = 3

# The API page documents the names daskgen/__init__.py re-exports, in source order, with the
# signatures shown as written (postponed annotations stay readable strings).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

html_theme = "pydata_sphinx_theme"
html_title = f"daskgen {release}"
html_theme_options = {
    # The docs build offline (CI has no network): no version switcher, no external icons.
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
