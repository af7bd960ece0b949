"""`delta.testing` is imported on first use: `import delta_actors` never imports pytest."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_imports_neither_pytest_nor_the_testing_module():
    code = (
        "import sys, delta_actors as delta\n"
        "assert 'pytest' not in sys.modules and 'delta_actors.testing' not in sys.modules\n"
        "runner = delta.testing.Runner\n"
        "assert 'delta_actors.testing' in sys.modules and 'pytest' not in sys.modules\n"
        "print(runner.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "delta_actors.testing.runner"


def test_an_unknown_attribute_of_the_package_is_an_attribute_error():
    import delta_actors as delta

    assert not hasattr(delta, "no_such_name")
    assert "testing" in delta.__all__
