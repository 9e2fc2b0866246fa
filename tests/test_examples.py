"""The README's examples run and learn."""

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_mlp_loss_goes_down(capsys):
    final_loss = _load("train_mlp").main(steps=200)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    first_loss = float(lines[0].split()[3])
    assert final_loss < 0.5 * first_loss


def test_vmap_ensemble_trains_every_member():
    losses = _load("vmap_ensemble").main(members=3, steps=60)
    assert losses.shape == (3,) and bool((losses < 0.2).all())


def test_meta_learning_hypergradient_lowers_the_loss(capsys):
    final = _load("meta_learning").main(outer_steps=10, inner_steps=3)
    first = float(capsys.readouterr().out.splitlines()[0].split()[-1])
    assert final < first
