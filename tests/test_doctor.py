"""``qfab doctor``: one line per tool, the fix under each missing one, and the count of missing
required tools as the exit status."""

from qfab import doctor
from qfab.cli import main


def test_doctor_finds_the_tools_the_test_suite_uses(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name, _, _ in doctor.CHECKS:
        assert name in out, name
    assert "all required tools found" in out


def test_doctor_counts_missing_required_tools_and_names_the_fix(monkeypatch):
    lines = []
    monkeypatch.setattr(doctor, "CHECKS", [
        ("here", lambda: (True, "v1", ""), True),
        ("gone", lambda: (False, "not installed", "pip install gone"), True),
        ("optional", lambda: (False, "not installed", "pip install optional"), False),
    ])
    assert doctor.doctor(out=lines.append) == 1
    text = "\n".join(lines)
    assert "MISSING" in text and "fix: pip install gone" in text and "fix: pip install optional" in text
    assert lines[-1] == "1 required tool(s) missing"
