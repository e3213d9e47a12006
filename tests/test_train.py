"""The shared trainer through its public entry point `train(cfg, report)`."""

import pytest
import torch
from conftest import micro_config

from vitsearch.augment import normalize
from vitsearch.data import load_data
from vitsearch.errors import NonFiniteLossError
from vitsearch.model import build_model
from vitsearch.train import CHECKPOINT_NAME, Feed, evaluate, seed_everything, train

METRICS = {"epoch", "train_loss", "val_loss", "val_acc", "lr", "grad_norm", "images_per_s"}


def test_learns_digits_and_reports_every_epoch():
    reports = []
    result = train(micro_config(epochs=8, aug_strength=0.0, lr=2e-3, batch_size=32), reports.append)
    assert [r["epoch"] for r in reports] == list(range(1, 9))
    assert METRICS <= set(reports[0])
    assert result["val_acc"] > 0.6  # chance is 0.1
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]


def test_validation_is_never_augmented():
    cfg = micro_config(aug_strength=1.0)
    data = load_data(cfg)
    model = build_model(cfg, data.channels, data.image_size, data.num_classes)
    feed = Feed(data, torch.device("cpu"))
    torch.manual_seed(1)
    loss_a, acc_a = evaluate(model, feed.val_batches(64), len(data.val_y), torch.float32)
    torch.manual_seed(2)
    loss_b, acc_b = evaluate(model, feed.val_batches(64), len(data.val_y), torch.float32)
    with torch.no_grad():
        direct = torch.nn.functional.cross_entropy(model.eval()(normalize(data.val_x)), data.val_y).item()
    assert (loss_a, acc_a) == (loss_b, acc_b) and loss_a == pytest.approx(direct, rel=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_accumulation_matches_one_big_batch(tmp_path, precision):
    # 4 micro-batches of 16 must give the same updates as one batch of 64 (no augmentation, no drop-path).
    states, figures = [], []
    for micro in (16, 64):
        cfg = micro_config(epochs=1, micro_batch_size=micro, aug_strength=0.0, drop_path=0.0, data_subset=320,
                           precision=precision)
        epoch = train(cfg, checkpoint_dir=tmp_path / str(micro))["history"][0]
        figures.append((epoch["train_loss"], epoch["grad_norm"], epoch["grad_norm_max"]))
        states.append(torch.load(tmp_path / str(micro) / CHECKPOINT_NAME, weights_only=True)["model"])
    # the same loss and gradient norms (bf16 rounds the two ways' activations differently: ~3e-5 apart)
    assert figures[0] == pytest.approx(figures[1], rel=1e-3)
    seed_everything(0)
    initial = build_model(micro_config(drop_path=0.0), 1, 16, 10).state_dict()
    for key in states[0]:
        moved = states[1][key] - initial[key]
        assert moved.abs().max() > 1e-3, key  # every tensor was updated...
        # ...the same way, up to rounding (fp32: <= 1.3e-4 of the update's norm on a CPU). AdamW's first steps
        # (~lr x the gradient's sign) turn rounding into whole steps where a gradient is near 0: one element
        # of a GPU's fp32 run (cuDNN may convolve in TF32) by 1.4 % of the largest step; in bf16 by up to 29 %
        # of a tensor's update on a CPU, so bf16 is held to the same loss and gradient norms above.
        if precision == "fp32":
            assert (states[0][key] - states[1][key]).norm() <= 0.01 * moved.norm(), key


def test_checkpoint_due_picks_the_epochs_that_write_a_checkpoint(tmp_path):
    """A search trial writes its checkpoint only for the epochs it uploads: `checkpoint_due` decides."""
    from vitsearch.train import peek_history

    asked = []

    def due(epoch):
        asked.append(epoch)
        return epoch == 2

    train(micro_config(epochs=3, data_subset=128, batch_size=32), checkpoint_dir=tmp_path, checkpoint_due=due)
    assert asked == [1, 2, 3]
    assert [m["epoch"] for m in peek_history(tmp_path / CHECKPOINT_NAME)] == [1, 2]  # written at epoch 2 only


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_paths_run_on_cpu(precision):
    result = train(micro_config(epochs=1, precision=precision, data_subset=128, batch_size=32))
    assert torch.isfinite(torch.tensor([result["train_loss"], result["val_loss"]])).all()


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path):
    cfg = micro_config(epochs=4, aug_strength=0.6, data_subset=400)  # RandAugment, Mixup and erasing all on
    full = train(cfg)["history"]

    class Interrupt(Exception):
        pass

    def stop_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, stop_after_two, checkpoint_dir=tmp_path)
    resumed_reports = []
    resumed = train(cfg, resumed_reports.append, checkpoint_dir=tmp_path, resume_from=tmp_path)["history"]
    assert [r["epoch"] for r in resumed_reports] == [3, 4]
    for a, b in zip(full, resumed):
        assert (a["epoch"], a["train_loss"], a["val_loss"], a["val_acc"]) == \
            (b["epoch"], b["train_loss"], b["val_loss"], b["val_acc"])


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    from vitsearch.errors import UserError
    train(micro_config(epochs=1, data_subset=128), checkpoint_dir=tmp_path)
    with pytest.raises(UserError, match="'epochs' is 1 there and 3 here"):
        train(micro_config(epochs=3, data_subset=128), resume_from=tmp_path)


def test_non_finite_loss_raises_the_dedicated_error():
    cfg = micro_config(epochs=2, lr=1e30, grad_clip=0.0, data_subset=256, batch_size=32)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, between optimizer steps 1 and \d+"):
        train(cfg)


def _epoch(cfg, prefetch: str | None, batched=None, augment=None, device="cpu", seen=None):
    """One epoch of `cfg` through the trainer's step loop, with the prefetching thread on or off. With
    `seen` (a list), every micro-batch the step trains on is appended to it: (images, targets)."""
    from vitsearch.train import setup, train_one_epoch

    data, dev = load_data(cfg), torch.device(device)
    steps = len(data.train_y) // cfg.batch_size
    run = setup(cfg, data, dev, steps, cfg.batch_size)
    run.prefetch, run.augment.batched = prefetch, batched
    if augment is not None:
        run.augment = augment(run.augment)
    if seen is not None:
        loss = run.loss
        run.loss = lambda x, y: seen.append((x.clone(), y.clone())) or loss(x, y)
    stats = train_one_epoch(run, Feed(data, dev), cfg.batch_size, 1, steps)
    return stats, run.model.state_dict()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("compile_", [False, True])
def test_prefetching_thread_makes_the_same_batches_on_a_gpu(compile_):
    """Where the thread runs by default (a GPU, a config that augments), with `compile: true` too: the
    steps train on the same augmented batches as without the thread, bit for bit, and the epoch's
    figures agree with the plain epoch's about as closely as two plain epochs agree with each other (a
    GPU's backward kernels need not add in the same order twice)."""
    cfg = micro_config(aug_strength=1.0, data_subset=1024, batch_size=128, micro_batch_size=64)
    runs = []
    for prefetch, config in ((None, cfg), (None, cfg), ("paced", cfg.replace(compile=compile_))):
        seen: list = []
        runs.append((_epoch(config, prefetch, device="cuda", seen=seen)[0], seen))
    (plain, plain_seen), (again, _), (threaded, threaded_seen) = runs
    assert len(plain_seen) == len(threaded_seen) > 0
    for (x, y), (tx, ty) in zip(plain_seen, threaded_seen):
        assert torch.equal(x, tx) and torch.equal(y, ty)
    noise = abs(plain["loss"] - again["loss"])
    assert abs(plain["loss"] - threaded["loss"]) <= max(10 * noise, 1e-3 if compile_ else 1e-5)


@needs_cuda
def test_a_checkpoint_written_on_a_gpu_opens_on_a_machine_without_one(tmp_path):
    """Its tensors are in host memory, so a plain `torch.load` (no map_location) on a CPU-only machine
    opens it; the model, its optimizer's moments and its fused step counts all come back on the CPU."""
    train(micro_config(epochs=1, data_subset=128, batch_size=32), checkpoint_dir=tmp_path, device="cuda")
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict | list | tuple):
            for v in value.values() if isinstance(value, dict) else value:
                yield from tensors(v)

    found = list(tensors(state))
    assert len(list(tensors(state["optimizer"]))) > len(state["model"])  # exp_avg, exp_avg_sq, step
    assert found and all(t.device.type == "cpu" for t in found)


@pytest.mark.parametrize("prefetch, batched", [("paced", None), ("paced", True), ("ahead", True)])
def test_prefetching_thread_trains_the_same_epoch(prefetch, batched):
    """On a GPU the next batches are gathered and augmented in a background thread (`_prefetched`). It
    makes the augmentation's random draws in the order the step loop would, so a seed gives the same
    batches, updates and figures, bit for bit (here on the CPU, with 2 micro-batches per step, full
    augmentation: RandAugment, Mixup/CutMix, erasing; batched: erasing by `erase_batched` and its noise)."""
    cfg = micro_config(aug_strength=1.0, drop_path=0.0, data_subset=384, micro_batch_size=32)
    (plain, plain_state), (threaded, threaded_state) = (_epoch(cfg, p, batched) for p in (None, prefetch))
    assert plain == threaded
    assert all(torch.equal(plain_state[k], threaded_state[k]) for k in plain_state)


@pytest.mark.parametrize("prefetch", ["paced", "ahead"])
def test_prefetching_thread_stops_with_an_error_on_either_side(prefetch):
    import threading

    def alive():
        return [t for t in threading.enumerate() if t.name == "vitsearch-prefetch"]

    class FailsAtCall:
        def __init__(self, augment, n=3):
            self.augment, self.calls, self.n = augment, 0, n

        def __call__(self, x, y):
            self.calls += 1
            if self.calls == self.n:
                raise ValueError("augmentation failed")
            return self.augment(x, y)

        def __getattr__(self, name):
            return getattr(self.augment, name)

    with pytest.raises(ValueError, match="augmentation failed"):  # raised in the thread, seen by the step loop
        _epoch(micro_config(data_subset=384, batch_size=32), prefetch, augment=FailsAtCall)
    assert not alive()
    with pytest.raises(NonFiniteLossError):  # raised by the step loop while the thread runs ahead
        _epoch(micro_config(lr=1e30, grad_clip=0.0, data_subset=2048, batch_size=32), prefetch)
    assert not alive()


def test_prefetching_thread_reads_a_streamed_folder(image_folder):
    """The thread also drives the streaming loader's worker processes: the same epoch as in memory."""
    common = dict(data=f"imagefolder:{image_folder}", image_size=16, batch_size=16, aug_strength=1.0, drop_path=0.0)
    plain, plain_state = _epoch(micro_config(**common, loader="memory"), None)
    threaded, threaded_state = _epoch(micro_config(**common, loader="stream"), "paced")
    assert plain == threaded
    assert all(torch.equal(plain_state[k], threaded_state[k]) for k in plain_state)
