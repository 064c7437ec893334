"""The README's example runs as written."""

import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    namespace = {"x": torch.randn(500, 5), "x_new": torch.randn(7, 5)}
    exec(code, namespace)
    q = namespace["q"]["z"]
    assert q.batch_shape == (7,) and q.event_shape == (2,)
