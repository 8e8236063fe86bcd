"""Every Python code block of README.md and docs/*.md runs, in order per file.

The blocks of one file share one namespace, as a reader who pastes them one after the
other into one session would; each file runs in its own temporary working directory
(blocks write files such as checkpoints). A block may be marked by an HTML comment on
the line right before its opening fence:

- ``<!-- snippet: partial -->``: deliberately incomplete (a fragment of a larger program).
  It is compiled, and run on its own in an empty namespace it must fail with NameError:
  a block that runs as written must not be marked partial.
- ``<!-- snippet: needs torch -->`` (or another optional module): skipped when that module
  is not installed, run otherwise.
- ``<!-- snippet: show_config -->`` before a ```text block: a sample of
  ``siglayer.show_config()``'s output, whose keys must be today's, in today's order.

Any other marker is an error, so a typo cannot silently skip a block.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import re
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

import siglayer

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?:^<!-- snippet: (?P<marker>[^>]*?) -->\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```",
    re.S | re.M,
)
KNOWN = re.compile(r"partial|needs [\w.]+|show_config")

os.environ.setdefault("MPLBACKEND", "Agg")  # a block that plots must not open a window


@dataclass
class Block:
    file: Path
    line: int
    lang: str
    marker: str | None
    code: str

    @property
    def name(self) -> str:
        return f"{self.file.name}:{self.line}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start("lang")) + 1
        found.append(Block(path, line, m["lang"], m["marker"], m["code"]))
    return found


def test_the_markers_are_known_and_the_fences_pair():
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        assert text.count("\n```") % 2 == 0, f"{path.name}: unpaired code fence"
        markers = re.findall(r"<!-- snippet: ([^>]*?) -->", text)
        for marker in markers:
            assert KNOWN.fullmatch(marker), f"{path.name}: unknown marker {marker!r}"
        assert len(markers) == sum(b.marker is not None for b in blocks(path)), (
            f"{path.name}: a snippet marker is not right before a code fence"
        )
    python = [b for path in FILES for b in blocks(path) if b.lang == "python"]
    assert len(python) >= 15, f"only {len(python)} Python blocks found: the regex broke"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_python_block_runs(path, tmp_path, monkeypatch, restore_threads):
    # The pages show bfloat16 throughout; ml-dtypes is in the test extra.
    pytest.importorskip("ml_dtypes", reason="the pages' bfloat16 blocks need ml-dtypes")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"snippets_{path.stem}"}
    ran = 0
    for block in blocks(path):
        if block.lang != "python":
            continue
        code = compile(block.code, block.name, "exec")
        if block.marker == "partial":
            with pytest.raises(NameError):
                exec(code, {"__name__": "partial"})
            continue
        if block.marker and block.marker.startswith("needs "):
            module = block.marker.removeprefix("needs ")
            if importlib.util.find_spec(module) is None:
                continue
        with redirect_stdout(io.StringIO()):
            exec(code, namespace)
        ran += 1
    python_blocks = [b for b in blocks(path) if b.lang == "python"]
    assert ran or not python_blocks or all(b.marker for b in python_blocks)


def test_show_config_samples_are_current():
    samples = [b for path in FILES for b in blocks(path) if b.marker == "show_config"]
    assert samples, "no show_config sample is marked"
    keys = list(siglayer.show_config(mode="dicts"))
    for sample in samples:
        shown = [line.split(":", 1)[0].strip() for line in sample.code.splitlines() if line]
        assert shown == keys, f"{sample.name}: the sample shows {shown}, today's keys {keys}"


def test_blocks_use_only_what_the_test_extra_installs():
    # Every module a block imports is installed here, or the block is marked as needing it.
    for path in FILES:
        for block in blocks(path):
            if block.lang != "python" or block.marker == "partial":
                continue
            for node in ast.walk(ast.parse(block.code)):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    optional = block.marker == f"needs {top}"
                    assert optional or importlib.util.find_spec(top) is not None, (
                        f"{block.name} imports {name}, which the test extra does not install; "
                        f"add it to the extra or mark the block '<!-- snippet: needs {top} -->'"
                    )
