"""The one rule for re-opening a run folder, and the stop signals, without tool processes."""

import json
import logging
import os
import signal
from types import SimpleNamespace

import pytest
import yaml
from detectron2.config import CfgNode

from bitdet.engine.run_folder import (
    RUN_CONFIG,
    RunConfigMismatch,
    check_run,
    check_runs,
    config_differences,
    open_run,
    record_config,
)
from bitdet.engine.stop_signals import (
    StopSignals,
    TrainingStopped,
    exit_status,
    ignore_stop_signals,
)


def _cfg(**solver):
    cfg = CfgNode(
        {
            "OUTPUT_DIR": "out",
            "MODEL": {"WEIGHTS": "", "NAME": "R14-tiny"},
            "SOLVER": {"MAX_ITER": 4, "STEPS": [2, 3], "CHECKPOINT_PERIOD": 2},
        }
    )
    cfg.SOLVER.update(solver)
    return cfg


def _finished_run(folder, cfg, results):
    record_config(folder, cfg)
    (folder / "model_0000003.pth").write_bytes(b"checkpoint")
    (folder / "results.json").write_text(json.dumps(results))


def test_differences_list_changed_added_and_removed_keys_but_not_where_the_run_writes():
    old = {
        "OUTPUT_DIR": "a",
        "SOLVER": {"MAX_ITER": 4, "CHECKPOINT_PERIOD": 2, "GONE": 1},
        "MODEL": {"WEIGHTS": ""},
    }
    new = {
        "OUTPUT_DIR": "b",
        "SOLVER": {"MAX_ITER": 6, "CHECKPOINT_PERIOD": 5, "NEW": [1, 2]},
        "MODEL": {"WEIGHTS": ""},
    }
    assert config_differences(old, new) == [
        ("SOLVER.GONE", 1, "<absent>"),
        ("SOLVER.MAX_ITER", 4, 6),
        ("SOLVER.NEW", "<absent>", [1, 2]),
    ]
    assert config_differences(old, old) == []


def test_an_empty_or_new_folder_is_a_new_run_and_records_its_config(tmp_path):
    cfg = _cfg()
    assert check_run(tmp_path / "absent", cfg, "results.json") is None
    assert open_run(tmp_path, cfg, "results.json") is None
    assert yaml.safe_load((tmp_path / RUN_CONFIG).read_text())["SOLVER"]["MAX_ITER"] == 4


def test_a_finished_run_of_the_same_config_is_reported_with_its_numbers(tmp_path, caplog):
    _finished_run(tmp_path, _cfg(), {"top1": 87.25, "steps": 4, "rule": {"crop": 16}})
    moved = _cfg(CHECKPOINT_PERIOD=100)  # how often it writes is not a setting of the run
    moved.OUTPUT_DIR = "elsewhere"
    with caplog.at_level(logging.INFO, logger="bitdet.engine.run_folder"):
        assert open_run(tmp_path, moved, "results.json") == {
            "top1": 87.25,
            "steps": 4,
            "rule": {"crop": 16},
        }
    assert "its results (results.json): top1 87.25, steps 4" in caplog.text
    assert (
        yaml.safe_load((tmp_path / RUN_CONFIG).read_text())["SOLVER"]["CHECKPOINT_PERIOD"] == 2
    )  # not rewritten


def test_a_run_of_another_config_is_refused_in_one_line_and_left_untouched(tmp_path):
    _finished_run(tmp_path, _cfg(), {"top1": 87.25})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = _cfg(MAX_ITER=6, STEPS=[4, 5])
    other.MODEL.WEIGHTS = "x" * 60
    with pytest.raises(RunConfigMismatch) as error:
        open_run(tmp_path, other, "results.json")
    message = str(error.value)
    assert "\n" not in message
    assert (
        f"{tmp_path} holds a run of another config (MODEL.WEIGHTS: '' -> {'x' * 37}..., "
        "SOLVER.MAX_ITER: 4 -> 6, SOLVER.STEPS: [2, 3] -> [4, 5]); --force starts over there"
    ) in message
    assert "or set another OUTPUT_DIR" in message
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_checkpoints_alone_are_a_run_too_and_force_clears_them(tmp_path):
    record_config(tmp_path, _cfg())
    (tmp_path / "model_0000001.pth").write_bytes(b"checkpoint")
    (tmp_path / "model_final.pth").write_bytes(b"final")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(RunConfigMismatch, match=r"SOLVER.MAX_ITER: 4 -> 2"):
        open_run(tmp_path, _cfg(MAX_ITER=2), "final.json")
    assert open_run(tmp_path, _cfg(), "final.json") is None  # same config, unfinished: continue
    assert (tmp_path / "model_0000001.pth").is_file()
    assert (
        open_run(tmp_path, _cfg(MAX_ITER=2), "final.json", force=True, clear=("model_final.pth",))
        is None
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_CONFIG]
    assert yaml.safe_load((tmp_path / RUN_CONFIG).read_text())["SOLVER"]["MAX_ITER"] == 2


def test_unreadable_records_are_refused_naming_the_file(tmp_path):
    _finished_run(tmp_path, _cfg(), {"top1": 1.0})
    (tmp_path / "results.json").write_text("{truncated")
    with pytest.raises(
        RunConfigMismatch, match=r"results.json cannot be read \(JSONDecodeError.*--force"
    ):
        check_run(tmp_path, _cfg(), "results.json")
    (tmp_path / RUN_CONFIG).write_text("SOLVER: [unclosed")
    with pytest.raises(RunConfigMismatch, match=r"config.yaml cannot be read"):
        check_run(tmp_path, _cfg(), "results.json")


# ---------------------------------------------------------------- stop signals
def test_ctrl_c_is_recorded_then_a_second_one_aborts(capfd):
    stop = StopSignals()
    assert stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.agreed() == signal.SIGINT
        assert "Ctrl-C again aborts without saving" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is not stop._on_signal


def test_ctrl_c_outranks_sigterm_when_ranks_disagree_and_sets_the_status():
    stop = StopSignals()
    assert stop.decide([0.0, 0.0]) is None
    assert stop.decide([0.0, 2.0]) == signal.SIGTERM
    assert (
        stop.decide([1.0, 1.0]) == signal.SIGINT
    )  # [SIGINT count, SIGTERM count] summed over ranks
    assert (exit_status(signal.SIGTERM), exit_status(signal.SIGINT)) == (0, 130)
    with pytest.raises(TrainingStopped) as stopped:
        stop.stop(signal.SIGINT, 6, None, "step 6")
    assert stopped.value.code == 130 and stopped.value.done == 6 and stopped.value.iteration == 5


def test_ctrl_c_outside_a_training_loop_is_one_line_and_status_130(capsys):
    from argparse import Namespace

    from bitdet.tools.cli import run_launched

    def main(args):
        raise KeyboardInterrupt  # e.g. while the model is built, or a second Ctrl-C while one saves

    with pytest.raises(SystemExit) as exit_info:
        run_launched(
            "pretrain", main, Namespace(num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")
        )
    assert exit_info.value.code == 130
    assert (
        capsys.readouterr().err
        == "pretrain: interrupted (Ctrl-C): nothing saved since the last checkpoint\n"
    )


def test_only_sigint_and_sigterm_stop_training():
    with pytest.raises(
        ValueError, match=r"signals \['SIGUSR1'\]: only SIGINT and SIGTERM stop training"
    ):
        StopSignals([signal.SIGINT, signal.SIGUSR1])


def test_a_sweep_checks_every_folder_first_unless_forced(tmp_path):
    _finished_run(tmp_path, _cfg(), {"top1": 50.0})
    with pytest.raises(RunConfigMismatch, match="SOLVER.MAX_ITER: 4 -> 6"):
        check_runs([(tmp_path / "new", _cfg()), (tmp_path, _cfg(MAX_ITER=6))], "results.json")
    check_runs([(tmp_path, _cfg(MAX_ITER=6))], "results.json", force=True)  # starts over instead


def test_workers_ignore_the_stop_signals_installed_or_inherited():
    """A DataLoader worker neither dies of a stop signal nor records or announces it: its
    ``worker_init_fn`` ignores the signals, and a handler it inherits by fork does nothing."""
    read, write = os.pipe()
    stop = StopSignals()
    assert stop.install()
    try:
        pid = os.fork()
        if pid == 0:  # the "worker": the parent's handler, inherited
            os.close(read)
            os.kill(os.getpid(), signal.SIGINT)
            inherited_ignores = not stop.requested
            ignore_stop_signals(0)
            os.kill(os.getpid(), signal.SIGTERM)  # SIG_IGN: the worker lives on
            os.write(write, b"ok" if inherited_ignores else b"recorded")
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        assert os.read(read, 16) == b"ok" and os.waitstatus_to_exitcode(status) == 0
        assert not stop.requested  # nothing reached the parent
    finally:
        os.close(read)
        stop.restore()


def test_the_detection_hook_saves_the_iteration_under_detectron2s_name(tmp_path, caplog):
    from bitdet.detection.hooks import PreemptionCheckpointer

    saved = []
    checkpointer = SimpleNamespace(
        save_dir=str(tmp_path), save=lambda name, iteration: saved.append((name, iteration))
    )
    hook = PreemptionCheckpointer(checkpointer)
    hook.trainer = SimpleNamespace(iter=4)
    hook.after_step()  # no signal: trains on
    assert saved == []
    hook.request(signal.SIGINT)
    with caplog.at_level(logging.WARNING), pytest.raises(TrainingStopped) as stopped:
        hook.after_step()
    assert saved == [("model_0000004", 4)]  # --resume starts at iteration 5
    assert (stopped.value.code, stopped.value.done) == (130, 5)
    assert stopped.value.path == f"{tmp_path}/model_0000004.pth"
    assert f"saved {tmp_path}/model_0000004.pth after iteration 4; exiting with status 130" in (
        caplog.text
    )
