"""Run-wide options of train_atcd.py and validate.py, declared once (flag, help, default, check: `atcd.options`).

A training method's own options live in its `Options` class (`atcd/methods/`), an attack's in its registration
(`atcd/attacks/`), the attack settings every attack shares in `atcd.attacks.AttackConfig`.
"""
import argparse
import os
from dataclasses import dataclass

import yaml

from .data import describe_datasets, resolve_dataset
from .errors import ConfigError
from .options import (
    AT_LEAST_1,
    HelpFormatter,
    add_options,
    comma_list,
    key_value,
    option,
    option_fields,
    parse_fraction,
    set_help,
)

__all__ = ["EVAL_EXAMPLES", "EVAL_FIRST", "EVAL_GROUPS", "TRAIN_EXAMPLES", "TRAIN_FIRST", "TRAIN_GROUPS", "EvalOptions",
           "TrainOptions", "add_timm_spellings", "resolve_lr", "resolve_timm_spellings", "run_parser",
           "run_validate_flags", "with_run_flags"]

TRAIN_GROUPS = ("model", "data", "augmentation (training on image folders and shards; docs/train.md: Data)",
                "optimisation", "adversary (every adversarial method)",
                "model selection (on a holdout carved from the training split)", "evaluation during training", "output")
EVAL_GROUPS = ("model", "data", "evaluation", "output")
# the options users change first, listed first by --help (eps: validate's is an attack setting, AttackConfig)
TRAIN_FIRST = ("model", "method", "dataset", "data_dir", "eps", "epochs", "batch_size", "lr", "output", "experiment")
EVAL_FIRST = ("model", "run", "checkpoint", "dataset", "data_dir", "attacks", "num_samples", "batch_size",
              "results_file")
_M, _D, _AUG, _O, _A, _S, _E, _OUT = TRAIN_GROUPS
_GE0 = lambda v: v >= 0
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")


# the image-size and normalisation options of both scripts (timm's flag names); each call makes a new field
def _input_size(group):
    return option(None, "C H W the image-folder / shard transforms produce (timm's flag); default: the model's "
                  "pretrained input size", type=int, nargs=3, metavar=("C", "H", "W"),
                  check=lambda v: v is None or (len(v) == 3 and min(v) >= 1), why="must be 3 numbers C H W >= 1",
                  group=group)


def _img_size(group):
    return option(None, "image size H = W of the transforms (timm's flag; --input-size sets C H W)", type=int,
                  check=lambda v: v is None or v >= 1, why="must be >= 1", group=group)


def _crop_pct(group):
    return option(None, "evaluation centre crop: resize to size / crop-pct, crop the centre (timm's); default: the "
                  "model's, 1.0 (whole image) at <= 32 px. RobustBench's ImageNet Res256Crop224 = --img-size 224 "
                  "--crop-pct 0.875 --interpolation bilinear", type=float, check=lambda v: v is None or 0 < v <= 1,
                  why="must be in (0, 1]", group=group)


def _interpolation(group):
    return option(None, "resize interpolation (default: the model's)", type=str, choices=_INTERPOLATIONS,
                  group=group)


def _mean_std(which: str, group):
    check = {"check": lambda v: v is None or min(v) > 0, "why": "must be > 0"} if which == "std" else {}
    return option(None, f"normalisation {which} applied inside the model wrapper to [0,1] input, 1 or C values "
                  f"(timm's flag; default: the model's pretrained_cfg, which it also replaces there)", type=float,
                  nargs="+", metavar=which.upper(), group=group, **check)


@dataclass(frozen=True)
class TrainOptions:
    model: str = option("smallcnn_mnist", "timm model name (e.g. resnet50, smallcnn_mnist)", group=_M)
    pretrained: bool = option(False, "start from timm's pretrained weights", group=_M)
    num_classes: int | None = option(None, "classes of the model's head", type=int, group=_M)
    in_chans: int | None = option(None, "input channels", type=int, group=_M)
    initial_checkpoint: str | None = option(None, "start from these weights (timm's flag): a .safetensors file or a "
                                            "run dir's model.safetensors; a classifier of another --num-classes is "
                                            "re-initialised, any other mismatch is an error (--resume also restores "
                                            "the optimizer)", type=str, check=lambda v: v is None or os.path.exists(v),
                                            why="names no such file or run dir", group=_M)
    drop: float = option(0.0, "dropout rate (timm's drop_rate)", check=lambda v: 0 <= v < 1, why="must be in [0, 1)",
                         group=_M)
    drop_path: float | None = option(None, "stochastic-depth rate (timm's drop_path_rate; the model must have "
                                     "drop-path blocks)", type=float, check=lambda v: v is None or 0 <= v < 1,
                                     why="must be in [0, 1)", group=_M)
    model_kwargs: tuple = option((), "more timm.create_model arguments, k=v ... (values read as Python literals)",
                                 type=key_value, nargs="*", metavar="K=V", group=_M)
    grad_checkpointing: bool = option(False, "gradient checkpointing through the model's blocks (timm's "
                                      "set_grad_checkpointing: less memory, one more forward per backward)",
                                      action="store_true", group=_M)
    sync_bn: bool = option(False, "synchronise BatchNorm statistics over processes (torch SyncBatchNorm, GPUs; timm's "
                           "flag); on one process nothing to synchronise", action="store_true", group=_M)
    dataset: str | None = option(None, "dataset (see the registry listing)", type=str, group=_D)
    data_dir: str | None = option(None, "root with train/ and val/ class sub-folders; for wds: a shard directory "
                                  "with _info.json (scripts/make_shards.py) or a shard pattern/URL", group=_D)
    dataset_download: bool = option(False, "torch/cifar10, torch/cifar100: download the dataset into --data-dir "
                                    "when it is missing (timm's flag)", action="store_true", group=_D)
    input_size: tuple | None = _input_size(_D)
    img_size: int | None = _img_size(_D)
    crop_pct: float | None = _crop_pct(_D)
    interpolation: str | None = _interpolation(_D)
    mean: tuple | None = _mean_std("mean", _D)
    std: tuple | None = _mean_std("std", _D)
    no_aug: bool = option(False, "no training augmentation: resize and centre-crop to the size (timm's flag)",
                          action="store_true", group=_AUG)
    hflip: float | None = option(None, "horizontal flip probability (timm's flag; default 0.5). 1-channel input "
                                 "(digits) is never augmented, as the MNIST references", type=float,
                                 check=lambda v: v is None or 0 <= v <= 1, why="must be in [0, 1]", group=_AUG)
    scale: tuple | None = option(None, "RandomResizedCrop area range above 32 px (timm's flag; default 0.08 1.0); at "
                                 "<= 32 px training pads by 1/8 of the size and crops at random", type=float, nargs=2,
                                 metavar=("LOW", "HIGH"), group=_AUG)
    ratio: tuple | None = option(None, "RandomResizedCrop aspect-ratio range (timm's flag; default 3/4 4/3)",
                                 type=parse_fraction, nargs=2, metavar=("LOW", "HIGH"), group=_AUG)
    batch_size: int = option(128, "per-process batch size", short="-b", **AT_LEAST_1, group=_D)
    workers: int | None = option(None, "loader worker processes per process; default: 0 on a cpu, on a GPU "
                                 "min(8, this process's share of the CPUs); args.yaml records the value used",
                                 short="-j", type=int, check=lambda v: v is None or v >= 0, why="must be >= 0",
                                 group=_D)
    pin_mem: bool = option(False, "page-locked (pinned) loader batches for faster copies to a GPU (timm's flag; "
                           "always on for CUDA)", action="store_true", group=_D)
    shuffle_buffer: int = option(2048, "wds: per-worker sample shuffle buffer (1 = shard order)", **AT_LEAST_1,
                                 group=_D)
    strict_data: bool = option(False, "fail on the first corrupt image or shard member (default: skip it, count it, "
                               "warn)", action="store_true", group=_D)
    epochs: int = option(10, "passes over the data (see --epochs-as-budget)", **AT_LEAST_1,
                         group=_O)
    epochs_as_budget: bool = option(False, "paper convention: run epochs/(T*K) passes over the data (Free-m: "
                                    "epochs/m). Off by default: --epochs counts passes over the data", group=_O)
    opt: str = option("sgd", "timm optimizer name", group=_O)
    lr: float | None = option(None, "learning rate; default: --lr-base scaled to the global batch when --lr-base is "
                              "given, else 0.05 (args.yaml records the resolved value)", type=float,
                              check=lambda v: v is None or v > 0, why="must be > 0", group=_O)
    lr_base: float | None = option(None, "timm's rule, used when --lr is not given: lr = lr-base x global batch / "
                                   "--lr-base-size (linear; sqrt of the ratio for adam/lamb-family optimizers) "
                                   "(default: off)", type=float, check=lambda v: v is None or v > 0,
                                   why="must be > 0", group=_O)
    lr_base_size: int = option(256, "global batch size (processes x -b x --grad-accum-steps) --lr-base is quoted at "
                               "(timm's flag)", **AT_LEAST_1, group=_O)
    lr_base_scale: str | None = option(None, "how --lr-base scales with the batch (timm's flag); default: sqrt for "
                                       "adam/lamb-family optimizers, else linear", type=str,
                                       choices=("linear", "sqrt"), group=_O)
    smoothing: float = option(0.0, "label smoothing of the training loss on the adversarial (or clean) examples "
                              "(timm's flag; timm's default is 0.1, adversarial training's 0); the attacks' losses "
                              "are never smoothed", check=lambda v: 0 <= v < 1, why="must be in [0, 1)", group=_O)
    weight_decay: float = option(5e-4, "weight decay", group=_O)
    momentum: float = option(0.9, "optimizer momentum", group=_O)
    opt_eps: float | None = option(None, "optimizer epsilon (timm's flag; default: the optimizer's)", type=float,
                                   check=lambda v: v is None or v > 0, why="must be > 0", group=_O)
    opt_betas: tuple | None = option(None, "optimizer betas (timm's flag; default: the optimizer's)", type=float,
                                     nargs="+", metavar="BETA", check=lambda v: v is None or all(0 <= b < 1 for b in v),
                                     why="must be in [0, 1)", group=_O)
    layer_decay: float | None = option(None, "layer-wise lr decay (timm's flag): the lr of layer group i of n is "
                                       "lr x decay^(n-1-i), groups as timm's param_groups_layer_decay makes them "
                                       "(the model's group_matcher, else its fallback); one group only is an error",
                                       type=float, check=lambda v: v is None or 0 < v <= 1,
                                       why="must be in (0, 1]", group=_O)
    sched: str = option("cosine", "timm scheduler name (stepped per update)", group=_O)
    decay_milestones: tuple | None = option(None, "--sched multistep: epochs at which the lr is multiplied by "
                                            "--decay-rate, in --epochs units (with --epochs-as-budget divided like "
                                            "them) (timm's flag)", type=float, nargs="+", metavar="EPOCH", group=_O)
    decay_rate: float = option(0.1, "lr factor at each milestone (timm's flag)", check=lambda v: 0 < v <= 1,
                               why="must be in (0, 1]", group=_O)
    warmup_epochs: int = option(0, "learning-rate warm-up epochs", group=_O)
    warmup_lr: float = option(1e-5, "learning rate of the first warm-up update, rising linearly to --lr (timm's flag)",
                              check=_GE0, why="must be >= 0", group=_O)
    min_lr: float = option(0.0, "lowest learning rate of the schedule", group=_O)
    cooldown_epochs: int = option(0, "epochs at --min-lr after the cosine/tanh/poly schedule ends, added to the run "
                                  "(timm's flag)", check=_GE0, why="must be >= 0", group=_O)
    clip_grad: float | None = option(None, "clip gradients to this (timm's flag; --clip-mode says how) (default: no "
                                     "clipping)", type=float, check=lambda v: v is None or v > 0, why="must be > 0",
                                     group=_O)
    clip_mode: str = option("norm", "--clip-grad mode (timm's flag): norm = total gradient norm, value = each "
                            "element, agc = adaptive (relative to the weights)", choices=("norm", "value", "agc"),
                            group=_O)
    mixed_precision: str | None = option(None, "autocast precision (timm's --amp --amp-dtype also set it); default: "
                                         "what `accelerate launch --mixed_precision` or `accelerate config` set "
                                         "(else no). The resolved value is what args.yaml records", type=str,
                                         choices=("no", "bf16", "fp16"), group=_O)
    eval_precision: str = option("fp32", "precision of every evaluation (per-epoch eval, EMA, holdout): fp32 with "
                                 "TF32 off whatever the launcher's --mixed_precision; tf32/bf16/fp16 on purpose only",
                                 choices=("fp32", "tf32", "bf16", "fp16"), group=_E)
    dist_timeout: float = option(1800.0, "seconds a process waits in a collective before the run aborts (NCCL's own "
                                 "default is 600)", check=lambda v: v > 0, why="must be > 0 seconds", group=_O)
    find_unused_parameters: bool = option(False, "DDP's find_unused_parameters: for a model whose forward skips some "
                                          "parameters (else DDP errors at the next step)", group=_O)
    model_ema: bool = option(False, "keep an exponential moving average of the weights (timm's ModelEmaV3): "
                             "evaluated per epoch (ema_* columns), checkpointed, written as model_ema.safetensors",
                             group=_O)
    model_ema_decay: float = option(0.9998, "EMA decay per optimizer update", check=lambda v: 0 < v < 1,
                                    why="must be in (0, 1)", group=_O)
    model_ema_warmup: bool = option(False, "EMA decay warm-up (timm's: 1 - (1 + update)^-2/3, capped at the decay)",
                                    group=_O)
    seed: int = option(42, "seed of weights, data order and the methods' random draws", group=_O)
    train_samples_per_epoch: int | None = option(
        None, "samples drawn per (nominal) epoch over all processes; default: the whole training split. With wds "
        "every process runs the same number of steps whatever the shard sizes", type=int, group=_O)
    grad_accum_steps: int = option(1, "minibatches per optimizer update (Accelerate gradient accumulation); only for "
                                   "methods with one update per minibatch", **AT_LEAST_1, group=_O)
    channels_last: bool = option(False, "channels-last memory format for the model and inputs", group=_O)
    torch_compile: str | None = option(None, "torch.compile the model (training and attack passes) with this "
                                       "backend (inductor when none is named; --torchcompile is timm's spelling) "
                                       "(default: off)", nargs="?", const="inductor", metavar="BACKEND",
                                       short="--torchcompile", type=str, group=_O)
    method: str = option("atcd", "training method", group=_A)
    eps: float | None = option(None, "L-inf radius in [0,1] pixels (8/255 ok); default: the dataset's (mnist-mini: "
                               "0.3), required for image folders and shards", type=parse_fraction,
                               check=lambda v: v is None or 0 <= v <= 1,
                               why="must be in [0,1] pixel units; use e.g. 8/255", group=_A)
    attack_step: float | None = option(None, "step size alpha of the method's attack steps; default: the method's "
                                       "rule of eps (ATCD eps/(2K), PGD-AT/TRADES 2.5 eps/r, YOPO 2.5 eps/(m n), "
                                       "Fast 1.25 eps, Free eps); args.yaml records the resolved value",
                                       type=parse_fraction, check=lambda v: v is None or v > 0, why="must be > 0",
                                       group=_A)
    eps_warmup_epochs: float | None = option(None, "ramp eps, and the attack step with it, linearly from 0 to --eps "
                                             "over this many epochs, per minibatch (the MNIST warm-up of Madry's and "
                                             "Wong's runs; 0: off); default: the method's rule (ATCD: half the passes "
                                             "at eps >= 0.1, else 0; others 0); args.yaml records the resolved value",
                                             type=float, check=lambda v: v is None or v >= 0, why="must be >= 0",
                                             group=_A)
    attack_bn: str = option("eval", "BN mode in attack steps", choices=("eval", "train"), group=_A)
    holdout: int | None = option(None, "training images held out for selection (default 500 if a rule below is on, "
                                 "else 0)", type=int, check=lambda v: v is None or v >= 0, why="must be >= 0",
                                 group=_S)
    early_stop: str = option("none", "robust: keep the best holdout-PGD checkpoint as model_best.safetensors (Rice "
                             "et al. 2020)", choices=("none", "robust"), group=_S)
    co_guard: bool = option(False, "catastrophic-overfitting guard: when holdout PGD accuracy falls more than "
                            "--co-drop points below its best, restore the best weights and stop", group=_S)
    co_drop: float = option(20.0, "points of holdout PGD accuracy", check=lambda v: v > 0, why="must be > 0 points",
                            group=_S)
    eval_samples: int = option(500, "test images evaluated per epoch (0 = the whole split)", check=_GE0,
                               why="must be >= 0 (0 = the whole split)", group=_E)
    eval_attack_steps: int = option(10, "PGD steps of the per-epoch evaluation", **AT_LEAST_1, group=_E)
    output: str = option("output/train", "output root", group=_OUT)
    experiment: str | None = option(None, "run folder name under --output", type=str, group=_OUT)
    resume: str | None = option(None, "checkpoint dir, or 'auto' for the newest complete one", type=str, group=_OUT)
    overwrite: bool = option(False, "the experiment folder holds an earlier run: delete its checkpoints, weights and "
                             "summary and train afresh (without it such a run is refused; --resume auto continues it)",
                             action="store_true", group=_OUT)
    resume_with_changes: bool = option(False, "--resume although options differ from the run's args.yaml (else "
                                       "refused)", action="store_true", group=_OUT)
    checkpoint_hist: int = option(2, "complete checkpoints kept (the oldest is pruned only after a new one is in "
                                  "place); --checkpoint-keep is the same option", short="--checkpoint-keep",
                                  **AT_LEAST_1, group=_OUT)
    checkpoint_every_steps: int = option(0, "also checkpoint every N minibatches inside an epoch (0: at epoch ends "
                                         "only)", check=_GE0, why="must be >= 0 (0 = at epoch ends only)", group=_OUT)
    max_bad_steps: int = option(10, "non-finite losses/gradients skipped before the run stops (keeps the checkpoint "
                                "from before the first one); checked every --log-interval minibatches and at "
                                "checkpoints", **AT_LEAST_1, group=_OUT)
    no_progress: bool = option(False, "no progress bars", action="store_true", group=_OUT)
    log_interval: int = option(50, "timm's flag: every N minibatches the progress bar's loss and --log-with are "
                               "updated and skipped non-finite updates are counted (--max-bad-steps); the device's "
                               "running sums are read only then, at epoch ends and at checkpoints, never per step",
                               **AT_LEAST_1, group=_OUT)
    log_with: str | None = option(None, "experiment tracker (Accelerate's; main process only): the running train loss "
                                  "and accuracy every --log-interval minibatches, every summary.csv column per epoch. "
                                  "tensorboard writes RUN_DIR/tensorboard/; all: every installed tracker; timm's "
                                  "--log-wandb = --log-with wandb", type=str,
                                  choices=("tensorboard", "wandb", "all"), group=_OUT)
    log_level: str = option("INFO", "what is logged: INFO is one line per epoch and per checkpoint; DEBUG adds "
                            "Accelerate's own save/load messages", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                            group=_OUT)
    log_data_keys: bool = option(False, "debug (wds): write the shard keys each process trained on to "
                                 "data_keys.json", action="store_true", group=_OUT)


@dataclass(frozen=True)
class EvalOptions:
    model: str = option("smallcnn_mnist", "timm name, hf-hub:org/name, local-dir:PATH, robustbench:cifar10/Linf/NAME "
                        "(imported into the HF cache on first use); a comma list, local-dir: glob or timm wildcard "
                        "('resnet*', 'all') evaluates each into one leaderboard", short="-m", group="model")
    run: str | None = option(None, "a train_atcd.py run folder: its args.yaml gives --model, --checkpoint, --dataset, "
                             "--data-dir, the input-size and normalisation flags and --eps; flags given here override "
                             "them (default: none)", type=str, group="model")
    model_list: str | None = option(None, "file of model names, one a line, evaluated in place of --model (timm's "
                                    "flag)", type=str, group="model")
    checkpoint: str | None = option(None, "weights (.safetensors) or a training run dir", type=str, group="model")
    use_ema: bool = option(False, "evaluate the EMA weights (model_ema.safetensors) beside --checkpoint",
                           action="store_true", group="model")
    pretrained: bool | None = option(None, "timm's pretrained weights; default: implied for a timm name without "
                                     "--checkpoint, as in timm (--no-pretrained: random weights on purpose)",
                                     action=argparse.BooleanOptionalAction, group="model")
    num_classes: int | None = option(None, "classes of the model's head", type=int, group="model")
    in_chans: int | None = option(None, "input channels", type=int, group="model")
    model_kwargs: tuple = option((), "more timm.create_model arguments, k=v ... (as the run was trained with)",
                                 type=key_value, nargs="*", metavar="K=V", group="model")
    allow_pickle: bool = option(False, "accept a non-safetensors --checkpoint (.pth/.pt/.bin), loaded with "
                                "torch.load(weights_only=True)", action="store_true", group="model")
    dataset: str | None = option(None, "dataset", type=str, group="data")
    data_dir: str | None = option(None, "dataset root (folder) or shard directory/pattern (wds)", type=str,
                                  group="data")
    dataset_download: bool = option(False, "torch/cifar10, torch/cifar100: download the dataset into --data-dir "
                                    "when it is missing (timm's flag)", action="store_true", group="data")
    protocol: str | None = option(None, "evaluate by a fixed protocol, resolved into the options above before the "
                                  "run (atcd.protocols): robustbench = RobustBench's benchmark(): its test images in "
                                  "its order (the first --num-samples), its preprocessing for the model, clean + "
                                  "AutoAttack standard at the threat model's eps", type=str,
                                  choices=("robustbench",), group="evaluation")
    split: str = option("test", "split to evaluate", group="data")
    input_size: tuple | None = _input_size("data")
    img_size: int | None = _img_size("data")
    crop_pct: float | None = _crop_pct("data")
    interpolation: str | None = _interpolation("data")
    mean: tuple | None = _mean_std("mean", "data")
    std: tuple | None = _mean_std("std", "data")
    batch_size: int = option(200, "per-process batch size", short="-b", **AT_LEAST_1, group="data")
    workers: int = option(0, "loader worker processes", short="-j", check=_GE0, why="must be >= 0", group="data")
    num_samples: int | None = option(None, "evaluate a fixed class-mixed subset", type=int,
                                     check=lambda v: v is None or v >= 1, why="must be >= 1", group="data")
    sample_ids: str | None = option(None, "file of the sample ids to evaluate, one a line (RobustBench's ImageNet "
                                    "list: file names relative to the split, their stems, or shard keys); with "
                                    "--num-samples N the first N of them", type=str, group="data")
    strict_data: bool = option(False, "fail on the first corrupt image or shard member (default: skip it, count it, "
                               "warn)", action="store_true", group="data")
    attacks: tuple = option(("clean", "pgd"), "comma list of attacks", type=comma_list, group="evaluation")
    eval_precision: str = option("fp32", "precision of clean accuracy, attacks, probes and AutoAttack: fp32 with TF32 "
                                 "off whatever the launcher's --mixed_precision; tf32/bf16/fp16 on purpose only",
                                 choices=("fp32", "tf32", "bf16", "fp16"), group="evaluation")
    dist_timeout: float = option(1800.0, "seconds a process waits in a collective before the run aborts (NCCL's own "
                                 "default is 600); ranks that finish their images early wait outside any collective",
                                 check=lambda v: v > 0, why="must be > 0 seconds", group="evaluation")
    sanity_samples: int = option(32, "probe images for the sanity checks (eps=0, monotonicity, white-box vs Square, "
                                 "model unchanged); 0 turns them off", check=_GE0, why="must be >= 0",
                                 group="evaluation")
    sweep_steps: tuple = option((), "robustness curve over attack steps, e.g. 10,20,50,100,200 (writes "
                                "sweep_steps.csv/.png)", type=lambda s: tuple(int(v) for v in comma_list(s)),
                                group="evaluation")
    sweep_eps: tuple = option((), "robustness curve over eps, e.g. 0,2/255,4/255,8/255",
                              type=lambda s: tuple(parse_fraction(v) for v in comma_list(s)), group="evaluation")
    sweep_attack: str = option("pgd", "attack used by the sweeps", group="evaluation")
    results_file: str | None = option(None, "write the results here (one model: its results JSON; several: the "
                                      "leaderboard)", type=str, group="output")
    results_format: str = option("json", "format of --results-file; csv: the leaderboard table (a row per model)",
                                 choices=("json", "csv"), group="output")
    update_card: str | None = option(None, "a model card (README.md path, folder, or org/name) to add these results "
                                     "to", type=str, group="output")
    push_card: bool = option(False, "with --update-card org/name: push the updated card to the Hub",
                             action="store_true", group="output")
    channels_last: bool = option(False, "channels-last memory format for the model and inputs (timm's flag)",
                                 group="evaluation")
    no_progress: bool = option(False, "no progress bars", action="store_true", group="output")


_AMP_DTYPES = {"float16": "fp16", "bfloat16": "bf16"}


def add_timm_spellings(p: argparse.ArgumentParser):
    """timm's train.py spellings of options declared above under other names; `resolve_timm_spellings` maps them."""
    g = p.add_argument_group("timm's spellings (so a timm command line works unchanged)")
    g.add_argument("--amp", action="store_true", default=argparse.SUPPRESS,
                   help="mixed precision of --amp-dtype: --mixed-precision fp16, or bf16 (default: off)")
    g.add_argument("--amp-dtype", choices=tuple(_AMP_DTYPES), default=argparse.SUPPRESS,
                   help="the dtype --amp autocasts to (default: float16; alone it does nothing, as in timm)")
    g.add_argument("--log-wandb", action="store_true", default=argparse.SUPPRESS,
                   help="--log-with wandb (default: off)")


def resolve_timm_spellings(args: dict) -> dict:
    """`--amp [--amp-dtype D]` -> mixed_precision, `--log-wandb` -> log_with (a contradiction is an error)."""
    amp, dtype, wandb = args.pop("amp", False), args.pop("amp_dtype", None), args.pop("log_wandb", False)
    for on, dest, value, flags in ((amp, "mixed_precision", _AMP_DTYPES[dtype or "float16"],
                                    f"--amp --amp-dtype {dtype or 'float16'}"),
                                   (wandb, "log_with", "wandb", "--log-wandb")):
        if not on:
            continue
        if args.get(dest) not in (None, value):
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flags} means {flag} {value}, but {flag} {args[dest]} is given too: give one of them")
        args[dest] = value
    return args


def resolve_lr(cfg) -> float:
    """--lr, else timm's rule of --lr-base (lr-base x global batch / --lr-base-size; sqrt of that ratio for
    adam/lamb-family optimizers unless --lr-base-scale says), else 0.05. The global batch counts the processes of
    the launch (WORLD_SIZE) and --grad-accum-steps, as timm's train.py."""
    if cfg.lr is not None:
        return cfg.lr
    if cfg.lr_base is None:
        return 0.05
    ratio = int(os.environ.get("WORLD_SIZE", "1")) * cfg.batch_size * cfg.grad_accum_steps / cfg.lr_base_size
    scale = cfg.lr_base_scale or ("sqrt" if any(o in cfg.opt.lower() for o in ("ada", "lamb")) else "linear")
    return cfg.lr_base * (ratio ** 0.5 if scale == "sqrt" else ratio)


def run_validate_flags(train_args: dict, weights: str) -> list[str]:
    """The validate.py flags that evaluate `weights` of a training run as it was trained (model, weights, data,
    input size, normalisation, classes, channels), from the run's args.yaml; eps and attacks are the caller's."""
    flags = ["--model", str(train_args.get("model")), "--checkpoint", weights]
    if train_args.get("dataset") and train_args.get("dataset") != "folder":
        flags += ["--dataset", str(train_args["dataset"])]
    if train_args.get("data_dir"):
        flags += ["--data-dir", str(train_args["data_dir"])]
    for name in ("input_size", "img_size", "crop_pct", "interpolation", "mean", "std", "num_classes", "in_chans"):
        v = train_args.get(name)
        if v is not None:
            flags += ["--" + name.replace("_", "-"), *(map(str, v) if isinstance(v, (list, tuple)) else [str(v)])]
    return flags


TRAIN_EXAMPLES = """examples:
  python train_atcd.py -c recipes/mnist_atcd.yaml --output output/train --experiment demo
  python train_atcd.py --model resnet18 --in-chans 1 --method pgd --eps 0.3 --epochs 2 -b 64 --amp --amp-dtype bfloat16
  accelerate launch --config_file hfconfigs/gpu_8_1node.yaml train_atcd.py -c recipes/imagenet_resnet50_atcd.yaml \\
      --data-dir data/imagenet-wds --output /shared/atcd --experiment in1k-r50"""
EVAL_EXAMPLES = """examples:
  python validate.py --run output/train/demo --attacks clean,pgd,autoattack --num-samples 200
  python validate.py -m hf-hub:ORG/NAME --data-dir IMAGENET_ROOT --split val --eps 4/255 --attacks clean,autoattack
  python validate.py -m 'resnet18*' --pretrained --data-dir IMAGENET_ROOT --split val --eps 4/255 \\
      --attacks clean,pgd --results-format csv --results-file leaderboard.csv"""


def run_parser(description: str, cls, groups: tuple[str, ...], first: tuple[str, ...],
               epilog: str) -> argparse.ArgumentParser:
    """A parser with `-c CONFIG.yaml`, the options users change first (`first`) in the first group, then one group
    per declared group of the run-wide options `cls`, and example commands at the end."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, epilog=epilog,
                                usage="%(prog)s [-h] [-c CONFIG.yaml] [OPTION ...] (the main options first, below)")
    p.add_argument("-c", "--config", default="", help="yaml file of defaults (keys = option names)")
    names = {f.name for f in option_fields(cls)}
    add_options(p.add_argument_group("main options"), cls, only=[n for n in first if n in names])
    for title in groups:
        add_options(p.add_argument_group(title), cls, only_group=title, skip=first)
    set_help(p, "dataset", f"dataset: {describe_datasets()}. Default: folder with --data-dir (as in timm), else "
             f"{resolve_dataset(None, None)}")
    return p


def with_run_flags(argv: list[str]) -> list[str]:
    """validate.py's `--run DIR`: the flags that evaluate that run as trained (`run_validate_flags` of its
    args.yaml, and its eps), put before the given ones, which override them (argparse keeps the last value)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--run", default=None)
    run = pre.parse_known_args(argv)[0].run
    if not run:
        return argv
    path = os.path.join(run, "args.yaml")
    try:
        with open(path) as f:
            train_args = yaml.safe_load(f) or {}
    except OSError:
        raise ConfigError(f"--run {run}: no {path}; give the folder a train_atcd.py run wrote (--output/--experiment)"
                          ) from None
    weights = os.path.join(run, "model.safetensors")
    return [*run_validate_flags(train_args, weights if os.path.isfile(weights) else run),
            "--eps", repr(float(train_args["eps"])), *argv]
