"""siglayer.torch without PyTorch: a clear ImportError (runs whether or not torch is
installed, in a process where importing torch fails)."""

from __future__ import annotations

import subprocess
import sys


def test_clear_import_error_without_torch():
    """Runs whether or not torch is installed: a process where `import torch` fails."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import siglayer\n"
        "try:\n"
        "    import siglayer.torch\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "ImportError: siglayer.torch needs PyTorch" in result.stdout
    assert (
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
        in result.stdout
    )
