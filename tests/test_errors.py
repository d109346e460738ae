"""The one way the CLI and the recipes end: a user error is one line on stderr and exit status 2."""

from __future__ import annotations

import pytest

from hfmtl.errors import ConfigError, exit_status_of


def test_the_exit_status_is_what_main_returns():
    assert exit_status_of(lambda: 0) == 0
    assert exit_status_of(lambda: None) == 0
    assert exit_status_of(lambda: 3) == 3


def test_a_user_error_is_one_line_and_status_2(capsys):
    def main():
        raise ConfigError("train.max_steps must be positive, got -1")

    assert exit_status_of(main) == 2
    err = capsys.readouterr().err
    assert err == "error: train.max_steps must be positive, got -1\n"


def test_other_exceptions_are_not_swallowed():
    def main():
        raise RuntimeError("a bug, not a user error")

    with pytest.raises(RuntimeError, match="a bug"):
        exit_status_of(main)
