from tests.conftest import run_cli

from feddf import __version__


def test_help_lists_commands():
    p = run_cli("--help", check=True)
    assert "Usage: feddf" in p.stdout
    from feddf.cli import main

    for name, cmd in main.commands.items():
        assert name in p.stdout
        sub = run_cli(name, "--help", check=True)
        assert "Usage:" in sub.stdout


def test_version():
    p = run_cli("--version", check=True)
    assert __version__ in p.stdout


def test_unknown_command_is_usage_error():
    p = run_cli("frobnicate")
    assert p.returncode == 2
    assert "No such command" in p.stderr


def test_console_script_installed():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "feddf"
    assert script.exists(), "the `feddf` console script is not installed in this environment"
    p = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Usage: feddf" in p.stdout
