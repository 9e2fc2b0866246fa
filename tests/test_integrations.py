"""compat as a drop-in where people train: Lightning, HF Trainer and DCP's state-dict API.

For every optimizer torch.optim has (the installed torch's), the same training run is made twice
inside the framework, once with ``torch.optim.X`` and once with ``compat.X``, from the same
initial weights and batches: the framework's own loop (gradient accumulation, gradient clipping,
an LR scheduler stepped by the framework, checkpoints written and resumed by the framework) drives
the optimizer. After the first half the parameters must be bitwise equal; each framework's
checkpoint of either run is then resumed with the *other* class, and all the resumed runs must end
bitwise equal to torch's run resumed from torch's checkpoint (the state dicts are torch's layout,
loaded with ``torch.load(weights_only=True)`` where the framework does so).

HF Trainer also builds the optimizer itself from ``optimizer_cls_and_kwargs`` (with its
weight-decay / no-decay parameter groups and its warm-up schedule) and calls ``optimizer.train()``
/ ``optimizer.eval()`` around evaluation, which Schedule-Free needs; both are run against the
reference (torch.optim, ``schedulefree``).

Lightning also runs compat's optimizers beyond torch.optim against their reference packages.

``torch.distributed.checkpoint.state_dict`` (``get_optimizer_state_dict`` /
``set_optimizer_state_dict``, the FSDP2 way to checkpoint) with ``dcp.save``/``dcp.load`` is run
the same way in one process: state dicts keyed by parameter name, cross-loaded both ways.

Lightning and HF Trainer are the ``integration`` extra (``pip install -e '.[integration]'``); without them
these tests skip.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, NamedTuple

import pytest
import torch

import compat
from _parity import result_or_error
from _registry import OPTIMIZERS

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the models are built here

HALF, STEPS = 4, 8  # checkpoint after HALF optimizer steps, resume to STEPS


class Case(NamedTuple):
    name: str  # torch.optim's class name; compat has the same
    kwargs: dict
    model: str  # "mlp", "matrices" (Muon: 2-D parameters only) or "sparse" (SparseAdam)


def _cases() -> list[Case]:
    cases = [Case(e.torch_cls.__name__, e.kwargs, "mlp") for e in OPTIMIZERS]
    cases += [Case("LBFGS", dict(lr=0.5, history_size=4, max_iter=3), "mlp"),
              Case("Muon", dict(lr=0.02, weight_decay=0.01), "matrices"),
              Case("SparseAdam", dict(lr=0.05), "sparse")]
    return [c for c in cases if hasattr(torch.optim, c.name)]


CASES = _cases()
IDS = [c.name for c in CASES]


class Regressor(torch.nn.Module):
    """A tiny model of each kind; ``forward(x, labels)`` returns the MSE loss (HF Trainer's way)."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        if kind == "sparse":
            self.embedding = torch.nn.EmbeddingBag(16, 4, mode="sum", sparse=True)
        else:
            bias = kind != "matrices"
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8, bias=bias), torch.nn.Tanh(),
                                           torch.nn.Linear(8, 1, bias=bias))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict:
        out = self.embedding(x).sum(-1, keepdim=True) if self.kind == "sparse" else self.net(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class Batches(torch.utils.data.Dataset):
    """64 fixed examples: float features, or bags of 3 indices for the sparse model."""

    def __init__(self, kind: str):
        gen = torch.Generator().manual_seed(1)
        self.x = (torch.randint(0, 16, (64, 3), generator=gen) if kind == "sparse"
                  else torch.randn(64, 4, generator=gen))
        self.y = torch.randn(64, 1, generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


def _make(case: Case, module) -> Callable:
    """The optimizer factory ``params -> optimizer``: ``module.<case.name>`` with the case's kwargs."""
    cls = getattr(module, case.name)
    return lambda params: cls(params, **case.kwargs)


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_bitwise(actual: list, expected: list, what: str) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert torch.equal(a, e), f"{what}: parameter {i} differs by {(a - e).abs().max().item():.3g}"


def _clip(case: Case) -> float:
    """Gradient clipping as the frameworks do it (``clip_grad_norm_``); sparse gradients unclipped."""
    return 0.0 if case.model == "sparse" else 0.5


# ------------------------------------------------------------------------------------- Lightning
def _lightning():
    return pytest.importorskip("lightning", reason="Lightning is in the integration extra")


def _lightning_fit(case: Case, module, max_steps: int, tmp_path, *, resume=None, save=None, prepare=None):
    """Fit with Lightning's loop; the optimizer class ``module.<case.name>`` (``prepare(opt)``
    called on it first, if given); ``(weights, trainer)``."""
    L = _lightning()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = Regressor(case.model)

        def training_step(self, batch, batch_idx):
            return self.model(**batch)["loss"]

        def configure_optimizers(self):
            opt = _make(case, module)(self.parameters())
            if prepare is not None:
                prepare(opt)
            scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    lit = Module()
    accumulate = 1 if case.name == "LBFGS" else 2  # Lightning steps LBFGS once per batch
    trainer = _lightning_run(lit, case.model, max_steps, tmp_path, resume, save,
                             accumulate_grad_batches=accumulate, gradient_clip_val=_clip(case) or None)
    return _weights(lit.model), trainer


def _lightning_run(lit, kind: str, max_steps: int, tmp_path, resume, save, **trainer_kwargs):
    """``lit`` fitted by a quiet CPU Trainer on :class:`Batches` of ``kind`` (resumed from the
    checkpoint ``resume``, saved to ``save`` if given); the Trainer."""
    L = _lightning()
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path), **trainer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(lit, torch.utils.data.DataLoader(Batches(kind), batch_size=8), ckpt_path=resume)
        if save is not None:
            trainer.save_checkpoint(save)
    return trainer


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lightning_fit_and_resume_cross_loaded(case, tmp_path):
    """Lightning's loop with compat.X equals it with torch.optim.X; checkpoints resume both ways."""
    _lightning()
    ckpt = {m.__name__: tmp_path / f"{m.__name__}.ckpt" for m in (torch.optim, compat)}
    half_torch, trainer_t = _lightning_fit(case, torch.optim, HALF, tmp_path, save=ckpt["torch.optim"])
    half_compat, trainer_c = _lightning_fit(case, compat, HALF, tmp_path, save=ckpt["compat"])
    assert isinstance(trainer_c.optimizers[0], getattr(compat, case.name))
    _assert_bitwise(half_compat, half_torch, "after the first half")

    saved = torch.load(ckpt["compat"], weights_only=False)["optimizer_states"][0]
    reference = torch.load(ckpt["torch.optim"], weights_only=False)["optimizer_states"][0]
    assert saved.keys() == reference.keys() and saved["param_groups"] == reference["param_groups"]
    assert saved["state"].keys() == reference["state"].keys()

    expected, _ = _lightning_fit(case, torch.optim, STEPS, tmp_path, resume=ckpt["torch.optim"])
    for module, source in ((compat, "torch.optim"), (torch.optim, "compat")):
        resumed, _ = _lightning_fit(case, module, STEPS, tmp_path, resume=ckpt[source])
        _assert_bitwise(resumed, expected, f"{module.__name__} resumed from {source}'s checkpoint")


def _lightning_fit_muon_and_adamw(module, optimizer_steps: int, tmp_path, *, resume=None, save=None):
    """Lightning's manual optimization with two optimizers, as torch's docs pair them: Muon for the
    matrices, AdamW for the rest (``module.Muon``, ``module.AdamW``), each with its StepLR."""
    L = _lightning()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.model = Regressor("mlp")

        def training_step(self, batch, batch_idx):
            optimizers = self.optimizers()
            for opt in optimizers:
                opt.zero_grad()
            self.manual_backward(self.model(**batch)["loss"])
            for opt in optimizers:
                self.clip_gradients(opt, gradient_clip_val=0.5)
                opt.step()
            for scheduler in self.lr_schedulers():
                scheduler.step()

        def configure_optimizers(self):
            matrices = [p for p in self.parameters() if p.dim() == 2]
            others = [p for p in self.parameters() if p.dim() != 2]
            opts = [module.Muon(matrices, lr=0.02, weight_decay=0.01), module.AdamW(others, lr=0.01)]
            return opts, [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in opts]

    lit = Module()
    _lightning_run(lit, "mlp", 2 * optimizer_steps, tmp_path, resume, save)  # (Lightning counts both steps)
    return _weights(lit.model)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is not in this torch")
def test_lightning_manual_optimization_with_muon_and_adamw(tmp_path):
    """Two compat optimizers stepped by hand in Lightning (manual optimization, clipping per
    optimizer, a scheduler each) equal torch.optim's pair bitwise, and each pair's checkpoint
    (both optimizers' states) resumes with the other pair as torch's resumes from its own."""
    _lightning()
    ckpt = {m.__name__: tmp_path / f"{m.__name__}.ckpt" for m in (torch.optim, compat)}
    half = {m.__name__: _lightning_fit_muon_and_adamw(m, HALF, tmp_path, save=ckpt[m.__name__])
            for m in (torch.optim, compat)}
    _assert_bitwise(half["compat"], half["torch.optim"], "after the first half")
    expected = _lightning_fit_muon_and_adamw(torch.optim, STEPS, tmp_path, resume=ckpt["torch.optim"])
    for module, source in ((compat, "torch.optim"), (torch.optim, "compat")):
        resumed = _lightning_fit_muon_and_adamw(module, STEPS, tmp_path, resume=ckpt[source])
        _assert_bitwise(resumed, expected, f"{module.__name__} resumed from {source}'s checkpoint")


def _beyond_torch() -> list:
    """compat's optimizers torch lacks, each with its reference class (``benchmarks.registry``;
    those whose package is missing are left out). Not here: SophiaH, whose step takes a Hessian
    estimate that Lightning's closure does not make, and MuonWithAdamW, whose reference is two
    torch.optim optimizers behind one step."""
    from benchmarks.registry import discover

    found, _ = discover(group="beyond-torch")
    return [a for a in found if a.compat_cls is not None and a.reference_cls is not None
            and a.spec.name not in ("SophiaH", "MuonWithAdamW")]


BEYOND = _beyond_torch()
#: state dicts in another layout than the reference's (README: LAMB, LARS), so they do not cross-load
OWN_STATE_LAYOUT = {"Lamb", "Lars"}


@pytest.mark.parametrize("available", BEYOND, ids=[a.spec.name for a in BEYOND])
def test_lightning_beyond_torch_matches_reference(available, tmp_path):
    """compat's optimizers beyond torch.optim under Lightning's loop equal their reference class
    (float32, to the reference parity tests' tolerance); each resumes from its own checkpoint and,
    where its state dict is the reference's layout, from the reference's."""
    _lightning()
    name, prepare = available.spec.name, available.spec.reference.prepare
    case = Case(name, {}, "mlp")  # the reference's defaults, which compat's class shares
    reference = type("reference", (), {name: available.reference_cls})
    ckpt = {"reference": tmp_path / "reference.ckpt", "compat": tmp_path / "compat.ckpt"}
    expected_half, _ = _lightning_fit(case, reference, HALF, tmp_path, save=ckpt["reference"], prepare=prepare)
    half, _ = _lightning_fit(case, compat, HALF, tmp_path, save=ckpt["compat"], prepare=prepare)
    _assert_close(half, expected_half, "after the first half")

    expected, _ = _lightning_fit(case, reference, STEPS, tmp_path, resume=ckpt["reference"], prepare=prepare)
    resumed, _ = _lightning_fit(case, compat, STEPS, tmp_path, resume=ckpt["compat"], prepare=prepare)
    _assert_close(resumed, expected, "compat resumed from its own checkpoint")
    if name in OWN_STATE_LAYOUT:
        with pytest.raises(ValueError, match="state of parameter 0 has keys"):
            _lightning_fit(case, compat, STEPS, tmp_path, resume=ckpt["reference"], prepare=prepare)
        return
    resumed, _ = _lightning_fit(case, compat, STEPS, tmp_path, resume=ckpt["reference"], prepare=prepare)
    _assert_close(resumed, expected, "compat resumed from the reference's checkpoint")


def _assert_close(actual: list, expected: list, what: str) -> None:
    """float32 parity with a reference package, as ``tests/_parity.TOL`` allows."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}, parameter {i}: {m}")


# ------------------------------------------------------------------------------------ HF Trainer
def _transformers():
    pytest.importorskip("accelerate", reason="HF Trainer needs accelerate (integration extra)")
    return pytest.importorskip("transformers", reason="HF Trainer is in the integration extra")


def _training_args(out_dir, max_steps: int, case: Case | None = None, **overrides):
    transformers = _transformers()
    args = dict(output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=8,
                gradient_accumulation_steps=2, max_grad_norm=_clip(case) if case else 0.5,
                use_cpu=True, report_to=[], logging_strategy="no", save_strategy="no",
                disable_tqdm=True, seed=0, dataloader_num_workers=0)
    args.update(overrides)
    return transformers.TrainingArguments(**args)


def _hf_train(case: Case, module, out_dir, max_steps: int, *, save_at=None, resume=None):
    """Train with HF Trainer, the optimizer and a StepLR handed in as ``optimizers=``."""
    transformers = _transformers()
    model = Regressor(case.model)
    opt = _make(case, module)(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    saving = dict(save_strategy="steps", save_steps=save_at) if save_at else {}
    trainer = transformers.Trainer(model=model, args=_training_args(out_dir, max_steps, case, **saving),
                                   train_dataset=Batches(case.model), optimizers=(opt, scheduler))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=resume)
    return _weights(model), trainer


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hf_trainer_train_and_resume_cross_loaded(case, tmp_path):
    """HF Trainer's loop with compat.X equals it with torch.optim.X; checkpoints resume both ways.

    Where torch.optim.X cannot run under the Trainer (LBFGS: the Trainer never passes a closure;
    SparseAdam: Trainers that measure the gradient norm at every step cannot on sparse gradients),
    compat.X fails the same way, with torch's exception type and message."""
    _transformers()
    result, torch_error = result_or_error(
        lambda: _hf_train(case, torch.optim, tmp_path / "torch.optim", HALF, save_at=HALF))
    if torch_error is not None:
        assert result_or_error(lambda: _hf_train(case, compat, tmp_path / "compat", HALF, save_at=HALF))[1] == torch_error
        return
    expected_half, _ = result
    half, trainer = _hf_train(case, compat, tmp_path / "compat", HALF, save_at=HALF)
    assert type(trainer.optimizer.optimizer) is getattr(compat, case.name)  # accelerate's wrapper
    _assert_bitwise(half, expected_half, "after the first half")
    checkpoint = {name: tmp_path / name / f"checkpoint-{HALF}" for name in ("torch.optim", "compat")}

    expected, _ = _hf_train(case, torch.optim, tmp_path / "expected", STEPS, resume=checkpoint["torch.optim"])
    for module, source in ((compat, "torch.optim"), (torch.optim, "compat")):
        resumed, _ = _hf_train(case, module, tmp_path / f"from-{source}", STEPS, resume=checkpoint[source])
        _assert_bitwise(resumed, expected, f"{module.__name__} resumed from {source}'s checkpoint")


def _hf_build(optimizer_cls, kwargs: dict, out_dir, **overrides):
    """Trainer builds the optimizer (``optimizer_cls_and_kwargs``) and its own LR schedule."""
    transformers = _transformers()
    model = Regressor("mlp")
    schedule = dict(weight_decay=0.1, warmup_steps=3, lr_scheduler_type="linear")
    args = _training_args(out_dir, STEPS, **{**schedule, **overrides})
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Batches("mlp"),
                                   eval_dataset=Batches("mlp"),
                                   optimizer_cls_and_kwargs=(optimizer_cls, kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
        metrics = trainer.evaluate()
    return _weights(model), metrics, trainer


@pytest.mark.parametrize("name", ["AdamW", "SGD", "Adafactor"])
def test_hf_trainer_builds_compat_optimizer(name, tmp_path):
    """``optimizer_cls_and_kwargs=(compat.X, ...)``: Trainer's two parameter groups (weight decay
    and none) and its linear warm-up schedule drive compat exactly as torch.optim."""
    _transformers()
    if not hasattr(torch.optim, name):
        pytest.skip(f"torch.optim.{name} is not in this torch")
    kwargs = dict(lr=0.05, **(dict(momentum=0.9) if name == "SGD" else {}))
    expected, expected_metrics, _ = _hf_build(getattr(torch.optim, name), kwargs, tmp_path / "torch")
    actual, metrics, trainer = _hf_build(getattr(compat, name), kwargs, tmp_path / "compat")
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]  # Trainer's decay / no-decay split
    _assert_bitwise(actual, expected, f"Trainer-built compat.{name}")
    assert metrics["eval_loss"] == expected_metrics["eval_loss"]


def test_hf_trainer_switches_schedule_free_to_eval_and_back(tmp_path):
    """Trainer calls ``optimizer.eval()`` before evaluating and ``train()`` after; compat's
    Schedule-Free AdamW follows ``schedulefree.AdamWScheduleFree`` through both switches."""
    _transformers()
    schedulefree = pytest.importorskip("schedulefree", reason="the reference is in the ref extra")
    kwargs = dict(lr=0.05, warmup_steps=2)
    runs = {}
    for label, cls in (("reference", schedulefree.AdamWScheduleFree), ("compat", compat.AdamWScheduleFree)):
        weights, metrics, trainer = _hf_build(cls, kwargs, tmp_path / label, eval_strategy="steps", eval_steps=3,
                                              lr_scheduler_type="constant", warmup_steps=0)
        assert trainer.optimizer.optimizer.param_groups[0]["train_mode"] is False  # evaluate() left it in eval
        runs[label] = weights, metrics
    (expected, expected_metrics), (actual, metrics) = runs["reference"], runs["compat"]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=2e-5, atol=2e-6)  # float32, as tests/test_schedule_free.py
    assert metrics["eval_loss"] == pytest.approx(expected_metrics["eval_loss"], rel=1e-5)


# ------------------------------------------------------- torch.distributed.checkpoint.state_dict
def _plain_steps(model: torch.nn.Module, opt, n: int, kind: str) -> None:
    """``n`` steps of a plain loop on the first 16 examples (a closure, which LBFGS needs)."""
    batch = Batches(kind)[range(16)]

    def closure():
        opt.zero_grad()
        loss = model(**batch)["loss"]
        loss.backward()
        return loss

    for _ in range(n):
        opt.step(closure)


def _dcp_round_trip(case: Case, saved_by, loaded_by, tmp_path):
    """Train with ``saved_by``, save through DCP's state_dict API, load into a fresh ``loaded_by``
    optimizer through the same API (which first makes its state by a zero-lr step), go on."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model = Regressor(case.model)
    opt = _make(case, saved_by)(model.parameters())
    _plain_steps(model, opt, HALF, case.model)
    saved = get_optimizer_state_dict(model, opt)  # keyed by parameter names (FQNs)
    dcp.save({"optim": saved}, checkpoint_id=str(tmp_path / "dcp"))

    resumed = Regressor(case.model)
    resumed.load_state_dict(model.state_dict())
    new_opt = _make(case, loaded_by)(resumed.parameters())
    target = {"optim": get_optimizer_state_dict(resumed, new_opt)}
    dcp.load(target, checkpoint_id=str(tmp_path / "dcp"))
    set_optimizer_state_dict(resumed, new_opt, target["optim"])
    _plain_steps(resumed, new_opt, STEPS - HALF, case.model)
    return saved, _weights(resumed)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_distributed_checkpoint_state_dict_api_cross_loads(case, tmp_path):
    """``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` (the FSDP2 + DCP way to checkpoint)
    give compat.X's state as torch.optim.X's, and a checkpoint of either resumes in the other
    bitwise. Where torch's API cannot run with torch.optim.X (it makes a fresh optimizer's state by
    a step with dense zero gradients and no closure: LBFGS, SparseAdam), compat.X fails the same way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result, torch_error = result_or_error(lambda: _dcp_round_trip(case, torch.optim, torch.optim, tmp_path / "t"))
        if torch_error is not None:
            assert result_or_error(lambda: _dcp_round_trip(case, compat, compat, tmp_path / "c"))[1] == torch_error
            return
        expected_saved, expected = result
        for saved_by, loaded_by in ((compat, torch.optim), (torch.optim, compat), (compat, compat)):
            label = f"saved by {saved_by.__name__}, loaded by {loaded_by.__name__}"
            saved, resumed = _dcp_round_trip(case, saved_by, loaded_by, tmp_path / label.replace(" ", "_"))
            _assert_bitwise(resumed, expected, label)
            assert saved["param_groups"] == expected_saved["param_groups"]
            assert saved["state"].keys() == expected_saved["state"].keys()
            for fqn, state in saved["state"].items():
                assert state.keys() == expected_saved["state"][fqn].keys(), fqn
                for key, value in state.items():
                    reference = expected_saved["state"][fqn][key]
                    assert type(value) is type(reference), (fqn, key)
                    if isinstance(value, torch.Tensor):
                        assert value.dtype == reference.dtype and torch.equal(value, reference), (fqn, key)
                    else:
                        assert value == reference, (fqn, key)


@pytest.mark.parametrize("available", BEYOND, ids=[a.spec.name for a in BEYOND])
def test_hf_trainer_builds_beyond_torch_optimizers_as_their_references(available, tmp_path):
    """``optimizer_cls_and_kwargs=(compat.X, {})`` for compat's optimizers beyond torch.optim:
    with the Trainer's weight-decay / no-decay groups and its schedule, compat.X ends where the
    reference class ends (float32, to 1e-5)."""
    _transformers()
    name, runs = available.spec.name, {}
    for label, cls in (("reference", available.reference_cls), ("compat", getattr(compat, name))):
        # (Schedule-Free classes step in train mode, which the Trainer sets: ``optimizer.train()``)
        weights, metrics, trainer = _hf_build(cls, {}, tmp_path / label)
        runs[label] = weights, metrics
        assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.1, 0.0]
    (expected, expected_metrics), (actual, metrics) = runs["reference"], runs["compat"]
    _assert_close(actual, expected, f"Trainer-built compat.{name}")
    assert metrics["eval_loss"] == pytest.approx(expected_metrics["eval_loss"], rel=1e-5)
