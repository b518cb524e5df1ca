"""hpcft.worker.compat: the arguments that differ between transformers 4.x and 5.x.

The pure tests cover both branches on any lane; the last test hands the installed
transformers (5.x in .venv, 4.57 in .venv-floor) what the worker hands it, and checks that
the warmup really is the job's fraction of the total steps.
"""

from __future__ import annotations

import os

import pytest

from hpcft.worker.compat import installed_out_of_range, out_of_range, training_args_kwargs, version_tuple, warmup_kwargs

pytestmark = pytest.mark.worker


@pytest.mark.parametrize("text,expected", [
    ("4.57.6", (4, 57, 6)), ("5.24.0", (5, 24, 0)), ("2.13.0+cpu", (2, 13, 0)),
    ("5.0.0.dev0", (5, 0, 0)), ("5.0.0rc1", (5, 0, 0)), ("2.6", (2, 6)),
])
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


def test_version_tuple_rejects_garbage():
    with pytest.raises(ValueError, match="not a version"):
        version_tuple("unknown")


def test_warmup_is_a_ratio_keyword_on_4x_and_a_fractional_step_count_on_5x():
    assert warmup_kwargs(0.1, "4.57.6") == {"warmup_ratio": 0.1}
    assert warmup_kwargs(0.0, "4.57.6") == {"warmup_ratio": 0.0}
    assert warmup_kwargs(0.1, "5.24.0") == {"warmup_steps": 0.1}
    # 5.x reads warmup_steps >= 1 as a step count: a full-length warmup must stay a fraction
    assert warmup_kwargs(1.0, "5.0.0") == {"warmup_steps": 0.999}
    assert warmup_kwargs(1.0, "4.57.6") == {"warmup_ratio": 1.0}


def test_warmup_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        warmup_kwargs(1.5, "5.24.0")


def test_training_args_kwargs_keep_the_per_batch_loss():
    for version in ("4.57.6", "5.24.0"):
        assert training_args_kwargs(warmup_ratio=0.1, transformers_version=version)[
            "average_tokens_across_devices"] is False


def test_installed_transformers_accepts_them_and_warms_up_for_the_fraction(tmp_path):
    import transformers
    from transformers import TrainingArguments

    kw = training_args_kwargs(warmup_ratio=0.1, transformers_version=transformers.__version__)
    saved = dict(os.environ)  # TrainingArguments exports ACCELERATE_* variables; later subprocesses must not see them
    try:
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert args.get_warmup_steps(200) == 20
    assert args.average_tokens_across_devices is False


def test_the_package_parses_as_python_3_10():
    """requires-python says 3.10 (what Ascend conda envs often run) while both lanes run 3.11:
    at least the grammar must stay 3.10's (no except*, no 3.11-only syntax)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "hpcft"
    sources = sorted(root.rglob("*.py"))
    assert len(sources) > 20
    for path in sources:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


DECLARED = ['submitit>=1.5', 'torch>=2.6; extra == "train"', 'transformers<6,>=4.57.6; extra == "train"',
            'deepspeed>=0.15.4; extra == "deepspeed"', 'pytest>=8; extra == "dev"']


def test_out_of_range_names_each_worker_package_outside_the_declared_range():
    lines = out_of_range(DECLARED, {"torch": "2.5.1", "transformers": "4.40.2", "deepspeed": "0.15.4",
                                    "submitit": "1.0", "pytest": "7.0"})
    assert len(lines) == 2, lines  # the login side's and the dev extra's packages are not the worker's
    assert lines[0].startswith("torch 2.5.1 is outside the range hpcft supports (>=2.6)")
    assert "transformers 4.40.2" in lines[1] and ">=4.57.6" in lines[1] and "<6" in lines[1]


def test_out_of_range_accepts_both_lanes_and_local_builds():
    for tf in ("4.57.6", "5.24.0", "5.0.0rc1"):
        assert out_of_range(DECLARED, {"torch": "2.13.0+cpu", "transformers": tf, "deepspeed": "0.19.8"}) == []
    assert out_of_range(DECLARED, {"transformers": "6.0.0"})  # the one upper bound


def test_this_environment_is_inside_the_declared_range():
    """Both lanes must be what pyproject.toml says they test (hpcft is installed in each venv)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        requires("hpcft")
    except PackageNotFoundError:
        pytest.fail("hpcft is not installed in this venv: run scripts/setup")
    assert installed_out_of_range() == []
