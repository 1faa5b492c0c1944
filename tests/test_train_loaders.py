"""The evaluation loaders of a training run on several processes: each process holds its own chunks of 250 images,
and together they hold the evaluation (and holdout) images exactly once. Accelerate's prepare() would instead pad
every process's last batch to 250 with repeated images (2 processes, 32 evaluation images: 500 images attacked
per epoch, measured 37 s against 15 s for a whole 2-process ResNet-18 smoke run)."""
import pytest
import timm

import atcd  # noqa: F401  (registers the models)
from atcd.config import parse_train_args
from atcd.data.train_loaders import create_train_loaders


def _images(loader) -> list[tuple]:
    """What a process evaluates: each image (its bytes) with its label, as the loader yields them."""
    return [(x.numpy().tobytes(), int(t)) for batch in loader for x, t in zip(batch[0], batch[1])]


@pytest.mark.parametrize("eval_samples,holdout", [(32, 0), (600, 300)])
def test_each_process_evaluates_its_own_chunks_and_together_every_image_once(eval_samples, holdout):
    cfg = parse_train_args(["--model", "smallcnn_mnist", "--dataset", "mnist-mini", "--method", "standard",
                            "--eval-samples", str(eval_samples), "--holdout", str(holdout)])
    pcfg = timm.create_model("smallcnn_mnist").pretrained_cfg
    per_rank = [create_train_loaders(cfg, rank, 2, pcfg) for rank in (0, 1)]
    one = create_train_loaders(cfg, 0, 1, pcfg)
    for which in (1, 2) if holdout else (1,):  # eval, holdout
        ranks = [_images(loaders[which]) for loaders in per_rank]
        everything = _images(one[which])
        assert len(everything) == (eval_samples if which == 1 else holdout)
        assert sorted(ranks[0] + ranks[1]) == sorted(everything)  # no image twice, none left out
        n = len(everything)
        chunks = [min(250, n - start) for start in range(0, n, 250)]
        assert [len(r) for r in ranks] == [sum(chunks[0::2]), sum(chunks[1::2])]  # chunks of 250, dealt in turn
