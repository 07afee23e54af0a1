"""ClassifierTrainer: exact resume, preemption, non-finite loss, skipped samples, accumulation."""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.engine import HookBase

from bitdet import create_model
from bitdet.engine import TrainingCheckpointer, choose_batch_split
from bitdet.weights import load_weights
from tests.engine.tiny_run import tiny_sets, tiny_trainer

REPO = Path(__file__).resolve().parents[2]


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_trains_and_writes_outputs(tmp_path):
    trainer = tiny_trainer(str(tmp_path), steps=4)
    final = trainer.train()
    assert final["step"] == 4 and final["skipped_images"] == 0
    assert (tmp_path / "metrics.json").is_file() and list(tmp_path.glob("events.out.tfevents.*"))
    # keep_last=2 with a checkpoint every 2 steps and at the end
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000001.pth",
        "model_0000003.pth",
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    state = torch.load(tmp_path / "model_0000003.pth", weights_only=True)
    assert state["step"] == 4 and not any(k.startswith("module.") for k in state["model"])
    # the file is an ordinary bitdet weights file
    fresh = create_model("R14-tiny", num_classes=10)
    report = load_weights(fresh, tmp_path / "model_0000003.pth")
    assert report.head.startswith("loaded")
    assert_identical(params(fresh), params(trainer.model))


def test_resume_in_process_is_exact(tmp_path):
    full = tiny_trainer(str(tmp_path / "full"), steps=6)
    full.train()
    part = tiny_trainer(str(tmp_path / "part"), steps=3)
    part.train()
    resumed = tiny_trainer(str(tmp_path / "part"), steps=6)
    assert resumed.resume() == 3
    resumed.train(resume=True)
    assert_identical(params(full.model), params(resumed.model))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: the pretraining presets' autocast
def test_resume_after_sigkill_is_bit_identical(tmp_path, precision):
    """Kill -9 right after the step-4 checkpoint, resume to 6: same parameters as 6 straight."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "tests.engine.tiny_run",
        str(tmp_path / "killed"),
        "6",
        "--kill-after",
        "5",
        "--workers",
        "2",
        "--precision",
        precision,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (tmp_path / "killed" / "last_checkpoint").read_text() == "model_0000003.pth"
    resumed = tiny_trainer(str(tmp_path / "killed"), steps=6, precision=precision)
    resumed.train(resume=True)  # in this process, with no DataLoader workers
    full = tiny_trainer(str(tmp_path / "full"), steps=6, precision=precision)
    full.train()
    assert_identical(params(full.model), params(resumed.model))


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    """The newest checkpoint truncated: resume from the one before, ending as an uninterrupted
    run."""
    full = tiny_trainer(str(tmp_path / "full"), steps=6)
    full.train()
    out = tmp_path / "damaged"
    out.mkdir()
    whole = (
        tmp_path / "full" / "model_0000003.pth"
    ).read_bytes()  # keep_last=2: steps 4 and 6 are on disk
    (out / "model_0000003.pth").write_bytes(whole)
    latest = (tmp_path / "full" / "model_0000005.pth").read_bytes()
    (out / "model_0000005.pth").write_bytes(latest[: len(latest) - 100])
    (out / "last_checkpoint").write_text("model_0000005.pth")
    resumed = tiny_trainer(str(out), steps=6)
    with caplog.at_level(logging.WARNING):
        assert resumed.resume() == 4
    assert (
        "cannot resume from model_0000005.pth (model_0000005.pth: truncated or corrupt (File is "
        "not a zip file)): resuming from model_0000003.pth, the newest readable checkpoint "
        "before it" in caplog.text
    )
    resumed = tiny_trainer(str(out), steps=6)
    resumed.train(resume=True)
    assert_identical(params(full.model), params(resumed.model))
    assert TrainingCheckpointer.load(out / "model_0000005.pth")["step"] == 6  # rewritten whole


def _with_saved_world_size(path, world_size):
    """The checkpoint ``path`` as if a run of ``world_size`` processes had written it."""
    state = torch.load(path, weights_only=True)
    assert state["data"] == {"world_size": 1}
    state["data"]["world_size"] = world_size
    torch.save(state, path)


def test_resume_with_another_process_count_keeps_a_map_style_stream(tmp_path, caplog):
    """A map-style set's global batch does not depend on the process count: the resume goes on
    (the real two-process case: reliability/test_pretrain_faults.py)."""
    tiny_trainer(str(tmp_path), steps=2).train()
    _with_saved_world_size(tmp_path / "model_0000001.pth", 2)
    with caplog.at_level(logging.WARNING):
        assert tiny_trainer(str(tmp_path), steps=4).resume() == 2
    assert (
        "resuming a run of 2 process(es) with 1: every step reads the same samples and "
        "augmentations" in caplog.text
    )


def test_resume_with_another_process_count_is_refused_with_a_batch_hook(tmp_path):
    def swap_halves(
        images, targets, generator
    ):  # pairs samples within the process's batch, as MixUp
        return torch.cat([images[4:], images[:4]]), torch.cat([targets[4:], targets[:4]])

    tiny_trainer(str(tmp_path), steps=2, batch_hook=swap_halves).train()
    _with_saved_world_size(tmp_path / "model_0000001.pth", 2)
    with pytest.raises(
        ValueError,
        match=r"model_0000001\.pth was written by a run of 2 process\(es\) and this run "
        r"has 1: the batch hook \(e\.g\. MixUp\) mixes samples within each "
        r"process's batch, .* resume with 2 process\(es\), or start over",
    ):
        tiny_trainer(str(tmp_path), steps=4, batch_hook=swap_halves).resume()


class SendSignal(HookBase):
    def __init__(self, signum):
        self.signum = signum

    def after_step(self):
        if self.trainer.iter == 1:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize(
    "signum, status, said",
    [(signal.SIGTERM, 0, "SIGTERM received"), (signal.SIGINT, 130, "interrupted (Ctrl-C)")],
)
def test_sigterm_and_ctrl_c_save_the_step_and_exit(tmp_path, caplog, signum, status, said):
    previous = signal.getsignal(signum)
    trainer = tiny_trainer(str(tmp_path), steps=10, period=100)
    trainer.register_hooks([SendSignal(signum)])
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as exc:
        trainer.train()
    assert exc.value.code == status
    # The signal arrives during step 1's hooks; ranks agree on it in step 2's all-reduce.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert TrainingCheckpointer.load(tmp_path / "model_0000002.pth")["step"] == 3
    assert f"{said}: saved {tmp_path / 'model_0000002.pth'} after step 3;" in caplog.text
    assert signal.getsignal(signum) is previous  # handler restored
    resumed = tiny_trainer(str(tmp_path), steps=4, period=100)
    with caplog.at_level(logging.INFO):
        assert resumed.train()["step"] == 4
    assert f"resumed from {tmp_path / 'model_0000002.pth'} at step 3" in caplog.text


class PoisonAt(HookBase):
    """Turns the model's first conv weights to NaN before step ``step``."""

    def __init__(self, step):
        self.step = step

    def before_step(self):
        if self.trainer.iter == self.step:
            with torch.no_grad():
                self.trainer.model.stem.conv.weight.fill_(float("nan"))


def test_non_finite_loss_names_step_and_keeps_checkpoint(tmp_path):
    trainer = tiny_trainer(str(tmp_path), steps=10, period=2)
    trainer.register_hooks([PoisonAt(3)])
    with pytest.raises(
        FloatingPointError,
        match=r"^loss is nan at step 3 \(lr 0\.05\): the weights were not "
        r"updated; last good checkpoint: .*model_0000001\.pth\. Lower",
    ):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    state = TrainingCheckpointer.load(tmp_path / "model_0000001.pth")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


class SomeUnusable(torch.utils.data.Dataset):
    """Every third sample is unusable (as a failed decode returns)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return None if i % 3 == 0 else self.base[i]


def test_unusable_samples_are_skipped_and_counted(tmp_path):
    train, _ = tiny_sets()
    trainer = tiny_trainer(str(tmp_path), steps=3)
    trainer.train_set = SomeUnusable(train)
    final = trainer.train()
    assert final["step"] == 3 and 0 < final["skipped_images"] < 24
    assert torch.isfinite(torch.tensor(final["loss"]))


def test_gradient_accumulation_matches_full_batch(tmp_path):
    # One step: later steps amplify float rounding through ReLU / max-pool switches.
    a = tiny_trainer(str(tmp_path / "a"), steps=1, batch_split=1)
    a.train()
    b = tiny_trainer(str(tmp_path / "b"), steps=1, batch_split=4)
    b.train()
    for k, v in params(a.model).items():
        torch.testing.assert_close(params(b.model)[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_bf16_channels_last_and_sigmoid_run(tmp_path):
    trainer = tiny_trainer(
        str(tmp_path), steps=2, precision="bf16", channels_last=True, loss="sigmoid"
    )
    final = trainer.train()
    assert torch.isfinite(torch.tensor(final["loss"]))


def _eager_and_compiled(tmp_path, monkeypatch, caplog, fake_compile):
    """Two tiny runs of 2 steps: eager, then with ``torch.compile`` replaced by
    ``fake_compile`` (warnings captured in ``caplog``)."""
    eager = tiny_trainer(str(tmp_path / "eager"), steps=2)
    eager.train()
    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled = tiny_trainer(str(tmp_path / "compiled"), steps=2, compile=True)
    with caplog.at_level(logging.WARNING):
        compiled.train()
    return eager, compiled


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch, caplog):
    def broken_compile(module, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("backend exploded")

        return run

    eager, compiled = _eager_and_compiled(tmp_path, monkeypatch, caplog, broken_compile)
    assert "torch.compile failed (RuntimeError: backend exploded)" in caplog.text
    assert_identical(params(eager.model), params(compiled.model))


def test_compile_failure_in_the_first_backward_falls_back_to_eager(tmp_path, monkeypatch, caplog):
    """The compiled backward runs in ``loss.backward()``, outside the compiled call: the first
    step's failure there also ends in eager training, with that step rerun from clean grads."""

    def explode(grad):
        raise RuntimeError("backward exploded")

    def backward_fails(module, **kwargs):
        def run(x):
            out = module(x)
            out.register_hook(explode)
            return out

        return run

    eager, compiled = _eager_and_compiled(tmp_path, monkeypatch, caplog, backward_fails)
    assert "torch.compile failed (RuntimeError: backward exploded)" in caplog.text
    assert compiled._compiled.failed
    assert_identical(params(eager.model), params(compiled.model))


def test_evaluate_hook_logs_metrics(tmp_path):
    calls = []

    def evaluate(model):
        assert not model.training
        calls.append(1)
        return {"top1": 12.5, "confusion": [[1]]}

    trainer = tiny_trainer(str(tmp_path), steps=4, evaluate=evaluate, eval_period=2)
    final = trainer.train()
    assert len(calls) == 2 and final["eval"]["top1"] == 12.5
    assert trainer.model.training
    text = (tmp_path / "metrics.json").read_text()
    assert '"eval/top1": 12.5' in text and "confusion" not in text


def test_choose_batch_split_halves_until_it_fits():
    tried = []

    def step(micro):
        tried.append(micro)
        if micro > 24:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    assert choose_batch_split(step, 100) == 8  # micro-batches 100, 50, 25 fail; 13 fits
    assert tried == [100, 50, 25, 13]

    def never(micro):
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(RuntimeError, match="micro-batch of 1"):
        choose_batch_split(never, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(global_batch=8, batch_split=16), "batch_split"),
        (dict(precision="fp16"), "precision"),
        (dict(loss="hinge"), "unknown loss"),
        (dict(max_steps=0), "max_steps"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_trainer(str(tmp_path), **{"steps": kwargs.pop("max_steps", 2), **kwargs})


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_with_workers(tmp_path):
    """As a cluster scheduler does: SIGTERM every process, DataLoader workers included."""
    import time

    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "tests.engine.tiny_run", str(tmp_path), "400", "--workers", "2"]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "last_checkpoint").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "exiting cleanly" in out
    step = TrainingCheckpointer.load(TrainingCheckpointer(tmp_path).latest())["step"]
    assert 2 <= step < 400


def test_batch_hook_gets_a_generator_seeded_by_step(tmp_path):
    """MixUp-style hooks see the same randomness per step in a fresh and in a resumed run."""

    def recorder(log):
        def hook(images, targets, generator):
            log.append(torch.rand(1, generator=generator).item())
            soft = torch.nn.functional.one_hot(targets, 10).float()  # soft targets reach the loss
            return images, soft

        return hook

    full, resumed = [], []
    tiny_trainer(str(tmp_path / "a"), steps=4, batch_hook=recorder(full)).train()
    tiny_trainer(str(tmp_path / "b"), steps=2, batch_hook=recorder(resumed)).train()
    tiny_trainer(str(tmp_path / "b"), steps=4, batch_hook=recorder(resumed)).train(resume=True)
    assert full == resumed and len(set(full)) == 4
