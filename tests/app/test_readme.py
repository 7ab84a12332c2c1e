"""The README documents every setting the app reads from the environment, and its commands are real."""

from __future__ import annotations

import re

from tests.conftest import ROOT
from webapp import config


class RecordingEnvironment(dict):
    """An empty environment that remembers every name the configuration asks for."""

    def __init__(self):
        super().__init__(BACKSTOP_ENV="development")
        self.asked: set[str] = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_every_environment_setting_is_in_the_readme_configuration_table():
    env = RecordingEnvironment()
    config.load(env)
    table = readme().split("## Configuration", 1)[1]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert len(env.asked) > 40  # the recorder saw the real configuration
    assert sorted(env.asked - documented) == []


def test_readme_run_and_test_commands_are_the_ones_ci_uses():
    text = readme()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in text
    assert "BACKSTOP_ENV=development .venv/bin/flask --app wsgi dev" in text


def test_every_screenshot_is_shown_in_the_readme():
    shots = sorted(path.name for path in (ROOT / "docs" / "screenshots").glob("*.png"))
    assert shots and [name for name in shots if f"docs/screenshots/{name}" not in readme()] == []


def test_every_literal_default_in_the_readme_configuration_table_is_the_settings_default():
    """A row's defaults, when they are literals (`10`, `5` or — for none), are what config.py uses."""
    table = readme().split("## Configuration", 1)[1]
    settings = {setting.variable: setting for setting in config.SETTINGS}
    defaults = config.load({})
    checked = []
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        values = re.findall(r"`([^`]*)`|—", cells[1])
        described = re.sub(r"`[^`]*`|—|[,/\s]", "", cells[1])  # words: a default explained, not given
        if not names or described or len(values) != len(names):
            continue
        for name, value in zip(names, values, strict=True):
            setting = settings[name]
            expected = defaults[setting.key]
            if value:
                assert setting.parse(name, value) == expected, name
            else:  # — : no default at all
                assert expected in (None, ()), name
            checked.append(name)
    assert len(checked) > 60
