"""synthesize.py's shared command line: the exit status and the process group it leaves."""
from __future__ import annotations

import pytest

from efficient_vdvae_common.data import DataError
from efficient_vdvae_common.synthesis_cli import EXIT_BAD_INPUT, run_synthesis_command


class _Group:
    def __init__(self):
        self.left = 0

    def leave(self) -> None:
        self.left += 1


def test_a_synthesis_that_ends_exits_0_and_leaves_the_group():
    group = _Group()
    assert run_synthesis_command(lambda: None, group.leave) == 0
    assert group.left == 1


def test_an_input_error_is_one_line_exit_2_and_the_group_is_left(capsys):
    group = _Group()

    def synthesize():
        raise DataError("the synthesis set (/data/none) has no images")

    assert run_synthesis_command(synthesize, group.leave) == EXIT_BAD_INPUT == 2
    assert capsys.readouterr().err == "error: the synthesis set (/data/none) has no images\n"
    assert group.left == 1


def test_a_bug_is_raised_with_its_traceback_and_the_group_is_left():
    group = _Group()

    def synthesize():
        raise KeyError("a bug of ours")

    with pytest.raises(KeyError, match="a bug of ours"):
        run_synthesis_command(synthesize, group.leave)
    assert group.left == 1


def test_a_group_joined_by_the_caller_is_kept():
    assert run_synthesis_command(lambda: None, None) == 0
