"""The example scripts and recipes refuse bad options at parse time (exit 2, one usage line), before any work."""

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: each script with the arguments of its cheapest mode
SCRIPTS = {
    "aldp_fab.py": ["--smoke"],
    "aldp_ml.py": ["--smoke"],
    "lj13_fab.py": ["--smoke"],
    "dw4_fab.py": ["--quick"],
    "dw4_ml.py": ["--quick"],
    "dw4_generalisation.py": ["--quick"],
    "free_energy_aldp.py": ["--quick"],
}


def _parse_error(script: Path, args: list[str], monkeypatch, capsys) -> str:
    """Run ``script`` with ``args``; it must stop with argparse's usage error (exit 2). Returns stderr."""
    monkeypatch.setattr(sys, "argv", [script.name, *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(script.name)
    return err


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_out_that_is_an_existing_file_is_refused(name, tmp_path, monkeypatch, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("not a folder")
    for out in (existing, existing / "sub"):
        err = _parse_error(ROOT / "examples" / name, [*SCRIPTS[name], "--out", str(out)], monkeypatch, capsys)
        assert f"argument --out: {existing} is an existing file, not a directory" in err


@pytest.mark.parametrize(("name", "option"), [("aldp_fab.py", "--umbrella"), ("aldp_ml.py", "--umbrella")])
def test_an_umbrella_folder_given_explicitly_must_exist(name, option, tmp_path, monkeypatch, capsys):
    missing, out = tmp_path / "no_such_cache", ["--out", str(tmp_path / "out")]
    err = _parse_error(ROOT / "examples" / name, [*SCRIPTS[name], *out, option, str(missing)], monkeypatch, capsys)
    assert f"argument {option}: {missing} does not exist" in err


def test_free_energy_example_checks_its_options(tmp_path, monkeypatch, capsys):
    script = ROOT / "examples" / "free_energy_aldp.py"
    err = _parse_error(script, ["--quick", "--umbrella-cache", str(tmp_path / "missing")], monkeypatch, capsys)
    assert "does not exist" in err
    err = _parse_error(script, ["--quick", "--umbrella-cache", str(tmp_path)], monkeypatch, capsys)
    assert "has no profile.npz" in err
    err = _parse_error(script, ["--quick", "--n-bootstrap", "1"], monkeypatch, capsys)
    assert "at least 2" in err


def test_umbrella_recipe_refuses_zero_bins(tmp_path, monkeypatch, capsys):
    script = ROOT / "systems" / "aldp" / "umbrella.py"
    for option in ("--bins", "--windows"):
        err = _parse_error(script, ["--smoke", "--cache", str(tmp_path), option, "0"], monkeypatch, capsys)
        assert f"argument {option}: must be a positive integer, got 0" in err
