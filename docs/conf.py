"""Sphinx configuration for pyro_amortized."""

import os
import sys
from importlib import metadata

# Document the package from this checkout even when it is not installed.
sys.path.insert(0, os.path.abspath(".."))

project = "pyro_amortized"
author = "The pyro_amortized developers"
copyright = "2025, The pyro_amortized developers"

try:
    release = metadata.version("pyro-amortized")
except metadata.PackageNotFoundError:
    release = "0.1.0"
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
pygments_style = "sphinx"
pygments_dark_style = "monokai"

html_theme = "furo"
html_title = f"pyro_amortized {release}"
