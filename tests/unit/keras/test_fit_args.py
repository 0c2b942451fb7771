"""fit() arguments that changed between attempts are refused, or allowed on request."""

from __future__ import annotations

import logging

import pytest

from ftharness.exitcodes import ExitCode
from ftharness.keras import _internals, fit_args
from ftharness.worker import TrainingArgumentsChangedError

SAVED = {"epochs": 5, "batch_size": 8, "steps_per_epoch": 16, "input": "arrays", "shuffle": True}


def test_the_fingerprint_takes_epochs_and_steps_from_params_and_the_rest_from_fit():
    call = _internals.FitCall(None, {"epochs": 9, "batch_size": 8, "shuffle": True})
    assert fit_args.fingerprint(call, {"epochs": 5, "steps": 16}, "arrays") == SAVED


def test_unchanged_arguments_pass():
    fit_args.check(SAVED, dict(SAVED), allow=False, location="ckpt-1")


def test_a_checkpoint_without_a_record_passes():
    fit_args.check(None, SAVED, allow=False, location="ckpt-1")


def test_changed_arguments_are_refused_in_one_line_with_exit_64():
    current = {**SAVED, "epochs": 6, "batch_size": 16, "shuffle": False}
    with pytest.raises(TrainingArgumentsChangedError) as raised:
        fit_args.check(SAVED, current, allow=False, location="ckpt-1")
    message = raised.value.message
    assert "\n" not in message
    assert "batch_size 8 -> 16" in message and "shuffle True -> False" in message
    assert "epochs" not in message  # not what makes it another training
    assert "allow_changed_fit_args=True" in message
    assert raised.value.exit_code == ExitCode.USAGE_ERROR == 64


@pytest.mark.parametrize("epochs", [3, 9])
def test_other_epochs_are_accepted_with_one_line_of_warning(caplog, epochs):
    with caplog.at_level(logging.WARNING, logger="ftharness.keras"):
        fit_args.check(SAVED, {**SAVED, "epochs": epochs}, allow=False, location="ckpt-1")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"epochs 5 -> {epochs}" in warnings[0]
    assert "\n" not in warnings[0]


def test_changed_arguments_are_allowed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ftharness.keras"):
        fit_args.check(SAVED, {**SAVED, "epochs": 6}, allow=True, location="ckpt-1")
    assert "epochs 5 -> 6" in caplog.text
