"""Image-folder / shard transforms: timm's pipeline in [0,1], the CIFAR pad-crop + flip at 32 px, timm's RRC above,
seeded draws (resume- and worker-safe), the size / crop / normalisation flags, and the multistep schedule."""
import json
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_main
from PIL import Image
from torchvision import transforms as T

from atcd.config import ConfigError, parse_eval_args, parse_train_args
from atcd.data import create_atcd_dataset, create_atcd_loader, create_pixel_transform, transform_kwargs
from atcd.data.transforms import Reseeded

HERE = os.path.dirname(os.path.abspath(__file__))  # an existing --data-dir for the parse-only cases


def _astronaut(size: int | None = None) -> Image.Image:
    """scikit-image's astronaut photo (512 px, RGB), optionally resized to `size` px: a real, asymmetric image."""
    from skimage import data
    im = Image.fromarray(data.astronaut())
    return im if size is None else im.resize((size, size), Image.LANCZOS)


def _write_digit_folder(root, digits, size: int = 32, per_class: tuple = (6, 2)) -> str:
    """Real digits (`digits` = (images, labels), 10 a class) as `size`-px RGB PNGs in ROOT/{train,val}/<digit>/:
    the first `per_class[0]` of each class for train, the next `per_class[1]` for val."""
    images, labels = digits
    seen = {c: 0 for c in range(10)}
    for img, y in zip(images, labels.tolist()):
        k = seen[y]
        seen[y] += 1
        split = "train" if k < per_class[0] else "val" if k < sum(per_class) else None
        if split is None:
            continue
        d = os.path.join(root, split, str(y))
        os.makedirs(d, exist_ok=True)
        im = Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR)
        im.convert("RGB").save(os.path.join(d, f"{k}.png"))
    return str(root)


def _shift_flip(out: torch.Tensor, base: torch.Tensor, pad: int):
    """(dy, dx, flipped) such that `out` is that crop of `base` zero-padded by `pad` (then flipped), or None."""
    h, w = base.shape[-2:]
    padded = F.pad(base, (pad, pad, pad, pad))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            for flipped, cand in ((False, crop), (True, crop.flip(-1))):
                if torch.equal(out, cand):
                    return dy - pad, dx - pad, flipped
    return None


def test_32px_training_pads_crops_and_flips_a_real_image():
    img = _astronaut(32)
    base = create_pixel_transform((3, 32, 32), False)(img)
    assert base.dtype == torch.float32 and torch.equal(base, T.ToTensor()(img))  # eval: the whole image, as is
    ds_tf = create_pixel_transform((3, 32, 32), True)
    outs = [ds_tf(img) for _ in range(64)]
    seen = [_shift_flip(o, base, pad=4) for o in outs]
    assert None not in seen  # nothing but a 4-pixel pad-crop and a flip (no colour jitter, no rescale)
    assert all(o.min() >= 0 and o.max() <= 1 and o.shape == (3, 32, 32) for o in outs)
    assert len({s[:2] for s in seen}) >= 10 and {s[2] for s in seen} == {False, True}
    assert all(torch.equal(create_pixel_transform((3, 32, 32), False)(img), base) for _ in range(3))


def test_no_aug_and_hflip_0():
    img = _astronaut(32)
    base = create_pixel_transform((3, 32, 32), False)(img)
    assert all(torch.equal(create_pixel_transform((3, 32, 32), True, no_aug=True)(img), base) for _ in range(8))
    tf = create_pixel_transform((3, 32, 32), True, hflip=0.0)
    assert {_shift_flip(tf(img), base, 4)[2] for _ in range(32)} == {False}


def test_grayscale_input_is_not_augmented(mnist_test_batch):
    digit = Image.fromarray((mnist_test_batch[0][0, 0].numpy() * 255).round().astype(np.uint8))  # 28 px
    base = create_pixel_transform((1, 28, 28), False)(digit)
    assert torch.equal(base, T.ToTensor()(digit))
    assert all(torch.equal(create_pixel_transform((1, 28, 28), True)(digit), base) for _ in range(8))
    with pytest.raises(ConfigError, match="--hflip: 1-channel"):
        create_pixel_transform((1, 28, 28), True, hflip=0.5)


def test_large_images_get_timms_random_resized_crop_and_flip():
    img = _astronaut()
    tf = create_pixel_transform((3, 64, 64), True, "bicubic")
    names = [type(t).__name__ for t in tf.transforms]
    assert "RandomResizedCropAndInterpolation" in names and "RandomHorizontalFlip" in names
    assert "ColorJitter" not in names  # the adversarial-training references crop and flip only
    outs = [tf(img) for _ in range(4)]
    assert all(o.shape == (3, 64, 64) and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert not torch.equal(outs[0], outs[1])
    whole = create_pixel_transform((3, 64, 64), True, "bicubic", scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    ref = T.Compose([T.Resize((64, 64), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()])(img)
    assert torch.equal(whole(img), ref)  # --scale / --ratio reach timm's RandomResizedCrop


def test_draws_are_a_function_of_seed_epoch_and_sample_not_of_the_global_rng():
    img = _astronaut(32)
    tf = Reseeded(create_pixel_transform((3, 32, 32), True), seed=7)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = tf(img, 0, 5)
    assert torch.equal(torch.get_rng_state(), state)  # the program's own RNG is untouched
    torch.manual_seed(123)
    assert torch.equal(tf(img, 0, 5), a)
    assert any(not torch.equal(tf(img, e, 5), a) for e in range(1, 6))  # a new epoch, new draws


def test_augmented_batches_depend_on_seed_and_epoch_only(tmp_path, mnist_test_batch):
    """What makes a resumed run bit-identical: folder and shard training batches are the same whatever the worker
    count and the global RNG state (a resume restores another one), and change with the epoch."""
    from atcd.data import create_wds_loader
    from atcd.data.shards import write_dataset_shards
    root = _write_digit_folder(tmp_path / "f", mnist_test_batch, per_class=(2, 1))
    shards = str(tmp_path / "s")
    write_dataset_shards("folder", shards, splits=("train",), data_dir=root, shard_size=8)
    ds = create_atcd_dataset("folder", "train", data_dir=root, input_size=(3, 32, 32), is_training=True, aug_seed=3)

    def folder_images(workers, epoch):  # image index -> tensor
        ds.set_epoch(epoch)
        return dict(enumerate(x for xb, _ in create_atcd_loader(ds, 10, False, num_workers=workers) for x in xb))

    def shard_images(workers, epoch, no_aug=False):  # sample key -> tensor (workers interleave samples differently)
        loader = create_wds_loader(shards, "train", 5, True, seed=3, num_workers=workers, input_size=(3, 32, 32),
                                   samples_per_epoch=60, no_aug=no_aug, with_keys=True)
        loader.set_epoch(epoch)
        return {k: x for xb, _, kb in loader for x, k in zip(xb, kb)}

    for images in (folder_images, shard_images):
        torch.manual_seed(0)
        e0 = images(0, 0)
        torch.manual_seed(1)
        e0_2 = images(2, 0)
        e1 = images(0, 1)
        both, again = set(e0) & set(e0_2), set(e0) & set(e1)  # a streamed epoch draws from an endless stream
        assert len(both) >= 15 and all(torch.equal(e0[k], e0_2[k]) for k in both)
        assert len(again) >= 15 and not all(torch.equal(e0[k], e1[k]) for k in again)
    plain = shard_images(0, 0, no_aug=True)
    assert sum(not torch.equal(e0[k], plain[k]) for k in set(e0) & set(plain)) >= 4  # the shards are augmented too


def test_res256crop224_equals_robustbench_preprocessing():
    """RobustBench's ImageNet Res256Crop224 is `--img-size 224 --crop-pct 0.875 --interpolation bilinear`."""
    import timm
    from skimage import data
    cfg = parse_eval_args(["--model", "resnet50", "--dataset", "folder", "--data-dir", HERE, "--img-size", "224",
                           "--crop-pct", "0.875", "--interpolation", "bilinear", "--eps", "4/255"])
    kw = transform_kwargs(cfg, timm.models.get_pretrained_cfg("resnet50").to_dict())
    assert kw == {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875}
    ours = create_pixel_transform(**kw, is_training=False)
    robustbench = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])  # robustbench.data.PREPROCESSINGS
    for arr in (data.astronaut(), data.chelsea(), data.coffee()):  # square and non-square photos
        img = Image.fromarray(arr)
        assert torch.equal(ours(img), robustbench(img))


def test_size_flags_resolve_like_timm():
    import timm
    r18 = timm.models.get_pretrained_cfg("resnet18").to_dict()  # 224 px, crop_pct 0.95, bicubic
    args = ["--model", "resnet18", "--dataset", "folder", "--data-dir", HERE, "--eps", "8/255"]
    kw = transform_kwargs(parse_train_args(args + ["--input-size", "3", "32", "32"]), r18)
    assert kw == {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 1.0}  # <= 32 px: whole image
    kw = transform_kwargs(parse_train_args(args + ["--img-size", "160", "--in-chans", "1"]), r18, is_training=True)
    assert kw["input_size"] == (1, 160, 160) and kw["crop_pct"] == 0.95 and kw["hflip"] is None
    assert transform_kwargs(parse_train_args(args + ["--crop-pct", "0.9"]), r18)["crop_pct"] == 0.9


@pytest.mark.parametrize("argv,needle", [
    (["--hflip", "0"], "--hflip augments image folders and shards"),
    (["--no-aug"], "--no-aug augments image folders and shards"),
    (["--img-size", "32"], "--img-size resizes image folders and shards"),
    (["--dataset", "folder", "--data-dir", HERE, "--eps", "0.1", "--img-size", "32", "--input-size", "3", "32", "32"],
     "--input-size and --img-size"),
    (["--dataset", "folder", "--data-dir", HERE, "--eps", "0.1", "--scale", "0.5", "0.1"], "--scale must be LOW HIGH"),
    (["--sched", "multistep"], "--sched multistep decays at --decay-milestones"),
    (["--decay-milestones", "3"], "--sched multistep decays at --decay-milestones"),
    (["--sched", "multistep", "--decay-milestones", "3", "2"], "--decay-milestones must be increasing"),
])
def test_transform_and_schedule_flags_that_cannot_apply_are_refused(argv, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_train_args(argv)


def test_mean_std_reach_the_model_wrapper_and_its_pretrained_cfg(monkeypatch, tmp_path):
    from atcd import evaluator, trainer
    from atcd.models import unwrap_timm
    built = []

    def spy(*a, **k):
        built.append(real(*a, **k))
        return built[-1]
    real = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", spy)
    r = run_main("train_atcd.py", "--method", "standard", "--mean", "0.5", "--std", "0.25", "--epochs", "1", "-b",
                 "128", "--train-samples-per-epoch", "128", "--eval-samples", "20", "--eval-attack-steps", "1",
                 "--no-progress", "--output", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = evaluator.load_model_for_eval(parse_eval_args(["--mean", "0.5", "--std", "0.25", "--no-pretrained"]))
    for model in (built[0], loaded):
        assert model.mean.flatten().tolist() == [0.5] and model.std.flatten().tolist() == [0.25]
        assert unwrap_timm(model).pretrained_cfg["mean"] == (0.5,)  # what a published config.json states
    with pytest.raises(ConfigError, match="--mean takes 1 or 3 values"):
        evaluator.load_model_for_eval(parse_eval_args(["--model", "resnet18", "--mean", "0.5", "0.5",
                                                       "--no-pretrained"]))


def test_args_yaml_with_list_options_runs_again(tmp_path):
    """args.yaml holds --input-size / --mean / --scale / --decay-milestones as yaml lists; `-c args.yaml` reads them
    back (each element through the option's type) to the same configuration."""
    import yaml
    cfg = parse_train_args(["--dataset", "folder", "--data-dir", HERE, "--eps", "8/255", "--input-size", "3", "32",
                            "32", "--mean", "0.5", "--std", "0.25", "0.5", "0.5", "--scale", "0.5", "1", "--ratio", "3/4", "4/3", "--sched",
                            "multistep", "--decay-milestones", "3", "4.5"])
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(cfg.flat()))
    again = parse_train_args(["-c", str(tmp_path / "args.yaml")])
    def as_yaml(d):  # yaml has lists, not tuples
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    assert as_yaml(again.flat()) == as_yaml(cfg.flat())
    assert again.ratio == [0.75, 4 / 3] and again.decay_milestones == [3.0, 4.5]


def test_multistep_lr_drops_by_decay_rate_at_each_milestone():
    from atcd.schedule import create_lr_scheduler
    cfg = parse_train_args(["--sched", "multistep", "--decay-milestones", "3", "4", "--decay-rate", "0.2",
                            "--lr", "0.5", "--epochs", "5"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    (sched, passes), upe = create_lr_scheduler(cfg, opt, 5, 10), 10
    assert passes == 5  # no --cooldown-epochs: the passes of the schedule
    lrs = []  # the lr each update runs with: the trainer steps the scheduler after every update
    for u in range(5 * upe):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step_update(num_updates=u + 1)
    first = [lrs[e * upe] for e in range(5)]  # first update of each epoch
    assert first == pytest.approx([0.5, 0.5, 0.5, 0.1, 0.02])
    # --epochs-as-budget: milestones in --epochs units, scaled with the passes (the CIFAR recipes: 30, 36 of 40)
    rec = parse_train_args(["-c", os.path.join(ROOT, "recipes", "cifar10_wrn34_atcd.yaml")])
    assert (rec.sched, rec.decay_milestones, rec.epochs_as_budget) == ("multistep", [30.0, 36.0], True)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=rec.lr)
    sched, _ = create_lr_scheduler(rec, opt, 5, 8)  # 40 / (T*K = 8) = 5 passes of 8 updates
    lrs = []
    for u in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step_update(num_updates=u + 1)
    assert lrs[0] == lrs[28] == pytest.approx(0.2)  # 3.75 passes = update 30 (timm applies it one update early)
    assert lrs[30] == pytest.approx(0.02) and lrs[37] == pytest.approx(0.002)


@pytest.mark.slow
def test_resnet18_trains_at_32px_from_a_32px_folder(tmp_path, mnist_test_batch):
    root = _write_digit_folder(tmp_path / "digits32", mnist_test_batch, per_class=(8, 2))
    r = run_main("train_atcd.py", "--model", "resnet18", "--num-classes", "10", "--input-size", "3", "32", "32",
                   "--dataset", "folder", "--data-dir", root, "--eps", "8/255", "--method", "standard", "--epochs", "1",
                   "-b", "16",
                   "--hflip", "0", "--eval-samples", "20", "--eval-attack-steps", "1", "--no-progress",
                   "--output", str(tmp_path / "out"), "--experiment", "r18")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "80 images/epoch at 3x32x32" in r.stderr  # the start line: the model runs at 32 px
    res = json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])
    assert res["eval_n"] == 20 and np.isfinite(res["train_loss"])


def test_a_published_run_states_its_size_and_normalisation(tmp_path):
    """--input-size / --mean / --std of a run reach the published config.json, so hub users preprocess alike."""
    import yaml

    from atcd.checkpoint import save_weights
    from atcd.models import build_model, unwrap_timm
    from atcd.publish.export import export_run
    run = tmp_path / "run"
    run.mkdir()
    args = {"model": "preact_resnet18_cifar", "method": "standard", "dataset": "folder", "eps": 0.0,
            "input_size": [3, 64, 64], "mean": [0.5], "std": [0.25]}
    (run / "args.yaml").write_text(yaml.safe_dump(args))
    save_weights(unwrap_timm(build_model(args["model"])), str(run / "model.safetensors"))
    # a results file of an older validate.py (no data_config, no sha256): the path it measured, the run's flags
    (run / "results.json").write_text(json.dumps({"model": args["model"], "checkpoint": str(run / "model.safetensors"),
                                                  "eps": 0.0, "norm": "Linf",
                                                  "num_samples": 10, "results": {"clean": {"top1": 50.0, "n": 10}}}))
    out = export_run(str(run), "org/name", out_dir=str(tmp_path / "export"), license="apache-2.0")
    with open(os.path.join(out, "config.json")) as f:
        pcfg = json.load(f)["pretrained_cfg"]
    assert (pcfg["input_size"], pcfg["mean"], pcfg["std"]) == ([3, 64, 64], [0.5] * 3, [0.25] * 3)
