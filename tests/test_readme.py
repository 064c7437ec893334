"""The README's example and the quickstart's run as pasted into a fresh session."""

import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code):
    output = io.StringIO()
    namespace = {}
    with contextlib.redirect_stdout(output):
        exec(code, namespace)
    return namespace, output.getvalue()


@pytest.mark.parametrize(
    "source, pattern",
    [
        ("README.md", r"```python\n(.*?)```"),
        ("docs/quickstart.rst", r".. code-block:: python\n\n(.*?)\n\n(?=\S)"),
    ],
)
def test_the_example_runs_as_pasted_and_prints_what_it_says(source, pattern):
    (code,) = re.findall(pattern, (ROOT / source).read_text(), flags=re.DOTALL)
    namespace, printed = _run(code.replace("\n   ", "\n").strip())
    lines = printed.splitlines()
    assert lines[0] == "{'data': ('x',)} ('z',) ('w',)"
    elbo = float(re.fullmatch(r"ELBO per row: (-?[0-9.]+)", lines[1]).group(1))
    assert -45 < elbo < -25  # about -35
    assert lines[2] == "torch.Size([69]) torch.Size([2])"
    assert namespace["q"]["z"].batch_shape == (69,)
