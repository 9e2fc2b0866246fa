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
