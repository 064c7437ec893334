"""Sphinx configuration for pyro_amortized."""

import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

# Document the package from this checkout even when it is not installed.
sys.path.insert(0, os.path.abspath(".."))

# The tutorials live in ../tutorials; Sphinx reads them from a copy inside docs/.
TUTORIALS = Path(__file__).parent / "tutorials"
shutil.rmtree(TUTORIALS, ignore_errors=True)
TUTORIALS.mkdir()
for notebook in sorted((Path(__file__).parent.parent / "tutorials").glob("*.ipynb")):
    shutil.copy2(notebook, TUTORIALS / notebook.name)

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
    "sphinx-mathjax-offline",  # MathJax ships with the site: math renders offline
    "sphinx.ext.viewcode",
    "myst_nb",
]

# Notebooks are rendered with the outputs stored in them (from a full run);
# `make test` executes them separately, in short mode.
nb_execution_mode = "off"
nb_merge_streams = True  # a progress bar's updates in one output block
myst_enable_extensions = ["dollarmath"]

autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}

source_suffix = {".rst": "restructuredtext", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
pygments_style = "sphinx"
pygments_dark_style = "monokai"

html_theme = "furo"
html_title = f"pyro_amortized {release}"
