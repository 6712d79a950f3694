"""lwise.core: names shared by every stage (keys) and the config contract (config)."""

from __future__ import annotations

import dataclasses

import pytest

from lwise.core import config, keys


@pytest.mark.parametrize(
    "eps, text",
    [(8.0, "8"), (0.25, "0.25"), (1e-7, "0.0000001"), (0.1234567, "0.1234567"), (20, "20")],
)
def test_format_eps_round_trips(eps, text):
    assert keys.format_eps(eps) == text
    assert float(keys.format_eps(eps)) == eps
    assert keys.parse_set(keys.set_name("logit", eps)) == ("logit", float(eps))


def test_close_epsilons_get_distinct_set_names_and_a_repeat_is_an_error():
    names = keys.set_names(["logit"], [0.1234567, 0.1234568])
    assert names == ["natural", "logit_eps0.1234567", "logit_eps0.1234568"]
    with pytest.raises(ValueError, match="listed more than once"):
        keys.set_names(["logit"], [2, 2.0])


def test_set_names_match_the_workflow_wildcard():
    import re

    for name in keys.set_names(keys.OBJECTIVES, [0.5, 1, 1e-7, 20]):
        assert re.fullmatch(keys.SET_PATTERN, name), name
    assert not re.fullmatch(keys.SET_PATTERN, "logit_eps1e-07")


def test_set_epsilon_and_parse_set():
    assert keys.set_epsilon("natural") == 0
    assert keys.set_epsilon("logit_diverge_eps0.5") == 0.5
    assert keys.parse_set("cross_entropy_eps10") == ("cross_entropy", 10.0)
    with pytest.raises(ValueError, match="objective"):
        keys.parse_set("clahe_eps2")


def test_image_keys_are_relative_to_the_key_root(tmp_path):
    csv = tmp_path / "difficulty" / "dirmap.csv"
    root = tmp_path / "imagefolder"
    assert keys.image_keys(["../imagefolder/val/3/a.jpg"], csv, root, suffix=".png") == [
        "val/3/a.png"
    ]
    assert keys.image_key(csv, "val/3/a.png") == "val/3/a.png"


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x.png", "a/../../x.png", "C:/x.png"])
def test_object_key_refuses_paths_that_leave_the_root(bad):
    assert keys.object_key(bad, "p/") is None
    assert keys.object_key("a/b.png", "p/") == "p/a/b.png"


@dataclasses.dataclass(frozen=True)
class _Download(config.Section):
    SECTION = "download"
    retries: int
    backoff: float
    timeout: float
    s3_endpoint_url: str | None


def test_section_defaults_come_from_the_schema():
    made = _Download.from_config({"retries": 2})
    assert made == _Download(2, 1.0, 60, None)


def test_section_errors_name_the_key_and_value():
    with pytest.raises(config.ConfigError, match=r"download\.retries 'two'.*integer"):
        _Download.from_config({"retries": "two"})
    with pytest.raises(config.ConfigError, match="retry"):
        _Download.from_config({"retry": 1})


def test_a_rerun_removes_temporary_outputs_left_by_a_killed_attempt(tmp_path):
    from lwise.core.atomic import atomic_path

    final = tmp_path / "stimuli" / "logit_eps2"
    stale = tmp_path / "stimuli" / ".logit_eps2.tmp-abc123"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "x.png").write_bytes(b"half")
    other = tmp_path / "stimuli" / ".logit_eps20.tmp-keep"  # another output's: left alone
    other.mkdir()
    with atomic_path(final, directory=True) as tmp:
        (tmp / "dirmap.csv").write_text("ok")
    assert sorted(p.name for p in final.parent.iterdir()) == [".logit_eps20.tmp-keep", "logit_eps2"]


GPU_SCRIPT = """
import atexit, logging, sys, types
from pathlib import Path
from lwise.core.jobs import rule_job
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
snakemake = types.SimpleNamespace(log=[str(out / "job.log")], resources={"gpu": 0})
with rule_job(snakemake, gpus=True) as ids:
    logging.getLogger("lwise.test").info("working on %s", ids)
    print("printed", end="")  # still in the stdout buffer when the block ends
    if sys.argv[2] == "fail":
        raise ValueError("bad input (injected)")
(out / "after").write_text("ran")
"""


@pytest.mark.parametrize("outcome", ["ok", "fail"])
def test_a_gpu_rules_script_ends_when_its_block_succeeds_and_fails_as_usual(tmp_path, outcome):
    """`rule_job` ends the process after a successful block (skipping the interpreter's slow
    teardown), with the atexit handlers run and the streams flushed; a failure is logged with
    its traceback and exits non-zero."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", GPU_SCRIPT, str(tmp_path), outcome], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    log = (tmp_path / "job.log").read_text()
    assert "working on []" in log
    assert (tmp_path / "atexit").read_text() == "ran"
    assert run.stdout == "printed"
    if outcome == "ok":
        assert run.returncode == 0 and not (tmp_path / "after").exists()  # ended in the block
    else:
        assert run.returncode == 1 and "bad input (injected)" in log and "Traceback" in log
