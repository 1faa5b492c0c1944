"""2 processes = 1 process for adversarial training: ATCD (warm-started chains, M-H, T updates per minibatch) and
Free-AT (m updates per minibatch, delta carried per rank), 2 x 32 against 1 x 64 on mnist-mini. Rank r takes half r
of each global batch (Accelerate's seedable sampler), so only DDP's gradient averaging and the per-rank method state
stand between the runs. Launch helpers and checks are test_distributed.py's."""
import pytest
import torch
from conftest import run_main
from safetensors.torch import load_file
from test_distributed import QUICK, _assert_same_training, _result, _train_1proc, _train_2proc

pytestmark = pytest.mark.slow  # each test launches a 2-process run (~7 s start-up)

COMMON = ("--dataset", "mnist-mini", "--opt", "sgd", "--lr", "0.05", "--eps", "0.3", "--eps-warmup-epochs", "0",
          "--epochs", "1", "--train-samples-per-epoch", "256", *QUICK)


def test_free_two_processes_equal_one_process(tmp_path):
    """Free-4 over 4 global minibatches (16 updates): the per-rank delta is the 1-process delta's half."""
    args = (*COMMON, "--method", "free", "--free-m", "4", "--output", str(tmp_path))
    one = _train_1proc(*args, "-b", "64", "--experiment", "one")
    two = _train_2proc(*args, "-b", "32", "--experiment", "two")
    assert two["num_processes"] == 2 and len(set(two["rank_weights_sha256"])) == 1
    assert two["num_updates"] == one["num_updates"] == 16
    _assert_same_training(load_file(tmp_path / "two" / "model.safetensors"),
                          load_file(tmp_path / "one" / "model.safetensors"))


def test_atcd_two_processes_equal_one_process_with_the_ranks_draws(tmp_path, monkeypatch):
    """ATCD T=2, K=2 with M-H (8 updates). Each rank draws its random starts and M-H uniforms from its own generator
    (seed + rank), so the 1-process reference draws the first half of every batch's numbers from seed 42's
    generator and the second half from seed 43's: the 2-process weights must equal it."""
    import atcd.methods.atcd as atcd_module
    args = (*COMMON, "--method", "atcd", "--atcd-T", "2", "--atcd-K", "2", "--attack-step", "0.1",
            "--output", str(tmp_path))
    two = _train_2proc(*args, "-b", "32", "--experiment", "two")
    assert two["num_processes"] == 2 and len(set(two["rank_weights_sha256"])) == 1
    gens = [torch.Generator().manual_seed(42 + r) for r in (0, 1)]  # --seed 42 (default) + rank
    real_init, real_uniform = atcd_module.random_init, atcd_module._uniform

    def split_init(x, eps, generator=None):
        h = len(x) // 2
        return torch.cat([real_init(x[:h], eps, gens[0]), real_init(x[h:], eps, gens[1])])

    def split_uniform(shape, generator=None):
        h = shape[0] // 2
        return torch.cat([real_uniform((h, *shape[1:]), gens[0]), real_uniform((shape[0] - h, *shape[1:]), gens[1])])

    monkeypatch.setattr(atcd_module, "random_init", split_init)
    monkeypatch.setattr(atcd_module, "_uniform", split_uniform)
    one = _result(run_main("train_atcd.py", *args, "-b", "64", "--experiment", "one"))
    assert two["num_updates"] == one["num_updates"] == 8
    _assert_same_training(load_file(tmp_path / "two" / "model.safetensors"),
                          load_file(tmp_path / "one" / "model.safetensors"))
