"""The README's table of environment variables lists exactly the variables the code reads:
every `CMHASH_*` option of every `cmhash` command and every service setting, with one
meaning each. `python -m tests.test_readme` prints the table to paste."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from service.cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# Variables read outside the CLI options and the service settings, with what they mean.
OTHER = {
    "CMHASH_DATA_ROOT": ("train, sources, tests", "where the real datasets live (default ../shared/data)"),
    "CMHASH_SHOW_WARNINGS": ("every command", "keep third-party deprecation warnings (default: hidden)"),
}


def cli_variables() -> dict[str, tuple[set[str], str]]:
    """CMHASH_* name -> (commands reading it, help of the first)."""
    group = typer.main.get_command(app)
    assert hasattr(group, "commands"), "service.cli.app is not a command group"
    out: dict[str, tuple[set[str], str]] = {}
    for name, command in group.commands.items():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str) and envvar.startswith("CMHASH_"):
                commands, text = out.get(envvar, (set(), getattr(param, "help", "") or ""))
                out[envvar] = (commands | {name}, text)
    return out


def setting_variables() -> dict[str, str]:
    """CMHASH_* name -> the setting's comment (its description in the source)."""
    source = (ROOT / "service" / "settings.py").read_text(encoding="utf-8")
    out = {}
    for field in Settings.model_fields:
        match = re.search(rf"^\s+{field}:[^\n]*?#\s*(.+)$", source, re.MULTILINE)
        out[f"CMHASH_{field.upper()}"] = match.group(1).strip() if match else ""
    return out


def expected_rows() -> dict[str, tuple[str, str]]:
    """CMHASH_* name -> (who reads it, what it means)."""
    rows: dict[str, tuple[str, str]] = {}
    for name, (commands, text) in sorted(cli_variables().items()):
        rows[name] = (", ".join(sorted(commands)), text)
    for name, text in setting_variables().items():
        who, meaning = rows.get(name, ("", text))
        rows[name] = (", ".join(sorted({*filter(None, who.split(", ")), "serve"})), meaning or text)
    rows.update(OTHER)
    return dict(sorted(rows.items()))


def readme_variables() -> set[str]:
    """The names in the README table's first column."""
    return set(
        re.findall(r"^\| `(CMHASH_[A-Z0-9_]+)` \|", (ROOT / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    )


def test_readme_table_lists_every_variable_and_no_other() -> None:
    expected, documented = set(expected_rows()), readme_variables()
    assert expected - documented == set(), "missing from the README table"
    assert documented - expected == set(), "in the README table but read by no code"


def test_each_variable_has_one_meaning() -> None:
    """A variable read by several commands is the same setting in each (one help text)."""
    group = typer.main.get_command(app)
    assert hasattr(group, "commands"), "service.cli.app is not a command group"
    meanings: dict[str, set[str]] = {}
    for command in group.commands.values():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                meanings.setdefault(envvar, set()).add(param.name or "")
    assert {k: v for k, v in meanings.items() if len(v) > 1} == {}  # one parameter name per variable


if __name__ == "__main__":
    print("| variable | read by | meaning |\n|---|---|---|")
    for name, (who, meaning) in expected_rows().items():
        print(f"| `{name}` | {who} | {meaning} |")
