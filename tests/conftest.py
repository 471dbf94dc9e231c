"""Test-session set-up: the same environment fixes the CLI entry points apply, and the one tiny
trained run that the checkpoint-consuming tests (render, eval, viewer, ns-* loaders) share."""

import subprocess
from pathlib import Path

import pytest
import yaml

import gstalker_ns._compat as _compat

_compat.apply_all()

REPO = Path(__file__).resolve().parent.parent


def run_checked(command, timeout=900, **kwargs):
    """Run a command; fail the test with its output tail when it exits non-zero."""
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert completed.returncode == 0, f"{command[:3]} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`ns-train gstalker` (configs/ci-tiny.yaml) on a 2 s, 64 px synthetic subject.

    Returns (root, config_path, subject_dir). Train once per session: consumers must not modify it.
    """
    from gstalker_ns.demo import find_config, ns_train_command
    from gstalker_ns.synth.subject import generate_subject

    root = tmp_path_factory.mktemp("tiny_run")
    preset = yaml.safe_load((REPO / "configs" / "ci-tiny.yaml").read_text())
    subject = generate_subject(root / "subject", **preset["synth"], progress=False)
    command = ns_train_command(subject, root / "outputs", preset["train_args"] + ["--logging.steps-per-log=1"], "e2e")
    run_checked(command, cwd=root)
    return root, find_config(root / "outputs", "e2e"), subject
