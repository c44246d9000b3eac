"""Start-up: `featvis --help` and argument errors import no torch and take under half of
`python -c "import torch"`, measured side by side in fresh processes; `import featvis` is lazy
yet every documented export resolves."""

from __future__ import annotations

import subprocess
import sys
import time

import featvis

RUNS = 2  # fastest of these per command: the machine is shared, the minimum is the least disturbed


def _seconds(code: str) -> float:
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
        best = min(best, time.perf_counter() - start)
    return best


def test_help_takes_under_half_of_importing_torch():
    torch_import = _seconds("import torch")
    help_run = _seconds("import sys; sys.argv = ['featvis', '--help']\nfrom featvis.cli import main\n"
                        "try:\n    main()\nexcept SystemExit:\n    pass")
    assert help_run < 0.5 * torch_import, f"featvis --help {help_run:.2f} s vs import torch {torch_import:.2f} s"


def test_help_and_argument_errors_import_no_heavy_module():
    """Every command's --help and a missing-argument error, in one fresh process: no torch,
    torchvision, captum, matplotlib or scikit-image afterwards (read from sys.modules)."""
    code = """
import contextlib, io, sys
from featvis.cli import COMMANDS, main
for argv in [["--help"], ["--version"], ["nosuchcommand"]] + [[c, "--help"] for c in COMMANDS] + [[c] for c in COMMANDS]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
heavy = sorted(m for m in ("torch", "torchvision", "captum", "matplotlib", "skimage", "numpy") if m in sys.modules)
print(",".join(heavy) or "none")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "none"


def test_every_export_resolves_and_is_listed():
    code = "import sys, featvis; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    for name in featvis.__all__:
        assert getattr(featvis, name) is not None, name
        assert name in dir(featvis)
    assert set(featvis._EXPORTS) == set(featvis.__all__)
    try:
        featvis.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
