"""Config flows once: yaml (-c) sets defaults, the CLI overrides, the result is a frozen dataclass.

A yaml key that is not a known option is an error (timm's `set_defaults(**yaml)` accepts typos silently).
"""
import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import yaml

__all__ = ["ConfigError", "EvalConfig", "TrainConfig", "parse_eval_args", "parse_fraction", "parse_train_args"]


class ConfigError(ValueError):
    """Invalid configuration: reported as one line, exit code 2."""


def parse_fraction(s) -> float:
    """'8/255' -> 0.0313..., '0.3' -> 0.3."""
    try:
        return float(Fraction(str(s).strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {s!r}") from None


@dataclass(frozen=True)
class TrainConfig:
    # model
    model: str = "smallcnn_mnist"
    pretrained: bool = False
    num_classes: int | None = None
    in_chans: int | None = None
    # data
    dataset: str = "mnist-mini"
    data_dir: str | None = None
    batch_size: int = 128
    workers: int = 0
    # optimisation (timm names)
    epochs: int = 10
    epochs_as_budget: bool = False
    opt: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    sched: str = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    clip_grad: float | None = None
    mixed_precision: str = "no"
    seed: int = 42
    train_samples_per_epoch: int | None = None
    grad_accum_steps: int = 1
    channels_last: bool = False
    torch_compile: str | None = None
    shuffle_buffer: int = 2048
    strict_data: bool = False
    # method
    method: str = "atcd"
    eps: float = 0.3
    attack_step: float = 0.1
    attack_bn: str = "eval"
    atcd_T: int = 4
    atcd_K: int = 2
    cd_lambda: float = 2.0
    cd_rho: float = 1.0
    momentum_decay: float = 0.0
    mh: bool = True
    mh_temperature: float = 1.0
    mh_kinetic: float = 1.0
    atcd_q0: str = "start"
    atcd_restart: bool = False
    reuse_grad: bool = False
    # baselines
    attack_steps: int = 10
    trades_beta: float = 6.0
    free_m: int = 8
    fast_alpha: float | None = None
    yopo_m: int = 5
    yopo_n: int = 3
    # model selection on a holdout carved from the training split (never the test split)
    holdout: int | None = None
    early_stop: str = "none"
    co_guard: bool = False
    co_drop: float = 20.0
    # eval during training (monitoring only; selection belongs on a train-carved split)
    eval_samples: int = 500
    eval_attack_steps: int = 10
    # output
    output: str = "output/train"
    experiment: str | None = None
    resume: str | None = None
    overwrite: bool = False
    checkpoint_keep: int = 2
    checkpoint_every_steps: int = 0
    max_bad_steps: int = 10
    no_progress: bool = False
    log_data_keys: bool = False

    def validate(self) -> "TrainConfig":
        checks = [
            (self.eps >= 0, f"--eps must be >= 0 (got {self.eps})"),
            (self.eps <= 1, f"--eps is in [0,1] pixel units (got {self.eps}); use e.g. 8/255"),
            (self.atcd_T >= 1, f"--atcd-T must be >= 1 (got {self.atcd_T})"),
            (self.atcd_K >= 1, f"--atcd-K must be >= 1 (got {self.atcd_K})"),
            (self.cd_lambda > 0, f"--cd-lambda must be > 0 (got {self.cd_lambda})"),
            (self.attack_step > 0 or self.eps == 0, f"--attack-step must be > 0 (got {self.attack_step})"),
            (self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})"),
            (self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})"),
            (self.lr > 0, f"--lr must be > 0 (got {self.lr})"),
            (self.mh_temperature > 0, f"--mh-temperature must be > 0 (got {self.mh_temperature})"),
            (self.attack_bn in ("eval", "train"), f"--attack-bn must be eval or train (got {self.attack_bn})"),
            (self.atcd_q0 in ("start", "prev"), f"--atcd-q0 must be start or prev (got {self.atcd_q0})"),
            (self.attack_steps >= 1, f"--attack-steps must be >= 1 (got {self.attack_steps})"),
            (self.trades_beta >= 0, f"--trades-beta must be >= 0 (got {self.trades_beta})"),
            (self.free_m >= 1, f"--free-m must be >= 1 (got {self.free_m})"),
            (self.fast_alpha is None or self.fast_alpha > 0, f"--fast-alpha must be > 0 (got {self.fast_alpha})"),
            (self.yopo_m >= 1 and self.yopo_n >= 1, (f"--yopo-m/--yopo-n must be >= 1 (got {self.yopo_m}, "
                                                     f"{self.yopo_n})")),
            (self.early_stop in ("none", "robust"), f"--early-stop must be none or robust (got {self.early_stop})"),
            (self.holdout is None or self.holdout >= 0, f"--holdout must be >= 0 (got {self.holdout})"),
            (not (self.early_stop != "none" or self.co_guard) or self.holdout_size > 0,
             "--early-stop/--co-guard select on a holdout carved from the training split: give --holdout N > 0"),
            (self.train_samples_per_epoch is None or self.train_samples_per_epoch >= self.batch_size,
             f"--train-samples-per-epoch must be >= the batch size (got {self.train_samples_per_epoch})"),
            (self.grad_accum_steps >= 1, f"--grad-accum-steps must be >= 1 (got {self.grad_accum_steps})"),
            (self.shuffle_buffer >= 1, f"--shuffle-buffer must be >= 1 (got {self.shuffle_buffer})"),
            (not self.streamed or self.holdout_size == 0,
             ("--holdout/--early-stop/--co-guard carve a holdout from a map-style training split; a streamed "
              "(--dataset wds) split cannot be carved: select on a map-style dataset or drop these options")),
            (not self.log_data_keys or self.streamed, "--log-data-keys needs --dataset wds (shard sample keys)"),
            # sign steps: alpha > 2*eps saturates the eps-ball on every step, so the step size means nothing
            (self.eps == 0 or self.method not in SIGN_STEP_METHODS or self.attack_step <= 2 * self.eps,
             (f"--attack-step {self.attack_step:g}"
              f"{' (the default)' if self.attack_step == TrainConfig.attack_step else ''} > 2 x --eps {self.eps:g}: "
              f"every sign step of --method {self.method} would jump across the eps-ball; give a step <= eps, "
              f"e.g. --attack-step {self.eps / 4:.4g}")),
            (self.checkpoint_keep >= 1, f"--checkpoint-keep must be >= 1 (got {self.checkpoint_keep})"),
            (self.checkpoint_every_steps >= 0,
             f"--checkpoint-every-steps must be >= 0 (got {self.checkpoint_every_steps}; 0 = at epoch ends only)"),
            (self.max_bad_steps >= 1, f"--max-bad-steps must be >= 1 (got {self.max_bad_steps})"),
            (not self.reuse_grad or self.method == "atcd",
             f"--reuse-grad is ATCD's option; --method {self.method} does not use it"),
            (self.co_drop > 0, f"--co-drop must be > 0 points (got {self.co_drop})"),
            (self.mh_kinetic >= 0, f"--mh-kinetic must be >= 0 (got {self.mh_kinetic})"),
            (self.workers >= 0, f"--workers must be >= 0 (got {self.workers})"),
            (self.eval_samples >= 0, f"--eval-samples must be >= 0 (got {self.eval_samples}; 0 = the whole split)"),
            (self.eval_attack_steps >= 1, f"--eval-attack-steps must be >= 1 (got {self.eval_attack_steps})"),
            (self.resume in (None, "", "auto") or os.path.isdir(self.resume),
             f"--resume {self.resume!r}: no such checkpoint directory (give a checkpoint-* dir or 'auto')"),
            (not (self.overwrite and self.resume), "--overwrite replaces the run that --resume continues: give one"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        from .methods import list_methods
        if self.method not in list_methods():
            raise ConfigError(f"unknown method {self.method!r}; available: {list_methods()}")
        if self.grad_accum_steps > 1:
            from .methods import create_method
            upb = create_method(self.method, self).updates_per_batch()
            if upb > 1:  # accumulation would average the replays' successive updates of one minibatch
                raise ConfigError(f"--grad-accum-steps {self.grad_accum_steps} cannot be combined with --method "
                                  f"{self.method}, which makes {upb} optimizer updates per minibatch; raise the "
                                  f"batch size or the number of processes instead")
        if self.torch_compile:
            import torch._dynamo
            if self.torch_compile not in torch._dynamo.list_backends(exclude_tags=()):
                raise ConfigError(f"unknown --torch-compile backend {self.torch_compile!r}; available: "
                                  f"{torch._dynamo.list_backends(exclude_tags=())}")
        check_model_name(self.model)
        return self

    @property
    def streamed(self) -> bool:
        """True when the data comes from WebDataset shards (`--dataset wds` / `wds/NAME`)."""
        from .data.wds import is_wds
        return is_wds(self.dataset)

    @property
    def holdout_size(self) -> int:
        """Training images held out for model selection: --holdout, else 500 when a selection rule needs them."""
        if self.holdout is not None:
            return self.holdout
        return 500 if (self.early_stop != "none" or self.co_guard) else 0


def check_model_name(name: str):
    """Fail early and in one line on a model timm does not know (hub/local-dir names are resolved later)."""
    import timm

    from . import models  # noqa: F401  (registers the paper's models)
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        raise ConfigError(f"unknown model {name!r} (timm has no such architecture; similar: {close})")


@dataclass(frozen=True)
class EvalConfig:
    model: str = "smallcnn_mnist"
    checkpoint: str | None = None
    pretrained: bool = False
    num_classes: int | None = None
    in_chans: int | None = None
    dataset: str = "mnist-mini"
    data_dir: str | None = None
    split: str = "test"
    batch_size: int = 200
    workers: int = 0
    num_samples: int | None = None
    eps: float = 0.3
    attacks: tuple = ("clean", "pgd")
    attack_loss: str = "ce"
    attack_steps: int = 40
    attack_step: float | None = None
    attack_restarts: int = 1
    attack_step_schedule: str = "constant"
    aa_version: str = "standard"
    aa_attacks: tuple = ()
    hmc_momentum: float = 1.0
    hmc_temperature: float = 1.0
    seed: int = 0
    results_file: str | None = None
    no_progress: bool = False
    allow_pickle: bool = False
    sanity_samples: int = 32
    sweep_steps: tuple = ()
    sweep_eps: tuple = ()
    sweep_attack: str = "pgd"
    update_card: str | None = None
    push_card: bool = False
    strict_data: bool = False

    def validate(self) -> "EvalConfig":
        if self.eps < 0:
            raise ConfigError(f"--eps must be >= 0 (got {self.eps})")
        if self.attack_steps < 1:
            raise ConfigError(f"--attack-steps must be >= 1 (got {self.attack_steps})")
        if self.attack_restarts < 1:
            raise ConfigError(f"--attack-restarts must be >= 1 (got {self.attack_restarts})")
        if self.aa_version not in AA_VERSIONS:
            raise ConfigError(f"--aa-version must be one of {AA_VERSIONS} (got {self.aa_version!r})")
        if self.aa_version == "custom" and not self.aa_attacks:
            raise ConfigError("--aa-version custom needs --aa-attacks, e.g. apgd-ce,apgd-t")
        bad = [a for a in self.aa_attacks if a not in AA_ATTACKS]
        if bad:
            raise ConfigError(f"unknown --aa-attacks {bad}; the package offers {AA_ATTACKS}")
        if self.sanity_samples < 0:
            raise ConfigError(f"--sanity-samples must be >= 0 (got {self.sanity_samples})")
        if any(v < 1 for v in self.sweep_steps) or any(not 0 <= v <= 1 for v in self.sweep_eps):
            raise ConfigError(f"--sweep-steps must be >= 1 and --sweep-eps in [0,1] (got {self.sweep_steps}, "
                              f"{self.sweep_eps})")
        if self.push_card and not self.update_card:
            raise ConfigError("--push-card needs --update-card org/name")
        if self.hmc_temperature <= 0:
            raise ConfigError(f"--hmc-temperature must be > 0 (got {self.hmc_temperature})")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1 (got {self.num_samples})")
        if self.eps > 1:
            raise ConfigError(f"--eps is in [0,1] pixel units (got {self.eps}); use e.g. 8/255")
        if self.attack_step is not None and self.attack_step <= 0:
            raise ConfigError(f"--attack-step must be > 0 (got {self.attack_step})")
        if self.attack_step is not None and self.eps > 0 and self.attack_step > 2 * self.eps:
            raise ConfigError(f"--attack-step {self.attack_step:g} > 2 x --eps {self.eps:g}: every sign step would "
                              f"jump across the eps-ball; use a step <= eps (default 2.5*eps/steps)")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0 (got {self.workers})")
        check_model_name(self.model)
        return self

    @property
    def step_size(self) -> float:
        return self.attack_step if self.attack_step is not None else 2.5 * self.eps / self.attack_steps


AA_VERSIONS = ("standard", "plus", "rand", "custom")
SIGN_STEP_METHODS = ("atcd", "pgd", "trades", "yopo")  # training methods that take --attack-step sign steps
AA_ATTACKS = ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square")


def _comma_list(s: str) -> tuple:
    return tuple(a.strip() for a in s.split(",") if a.strip())


def _bool_flag(p, name, default, help):
    p.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction,
                   default=default, help=help)


def train_parser() -> argparse.ArgumentParser:
    from .methods import list_methods
    d = TrainConfig()
    p = argparse.ArgumentParser(description="Adversarial training (ATCD and baselines) of any timm model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--config", default="", help="yaml file of defaults (keys = option names)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="timm model name (e.g. resnet50, smallcnn_mnist)")
    _bool_flag(g, "pretrained", d.pretrained, "start from timm's pretrained weights")
    g.add_argument("--num-classes", type=int, default=d.num_classes)
    g.add_argument("--in-chans", type=int, default=d.in_chans)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help="built-in name (mnist-mini), 'folder' with --data-dir, or 'wds' / 'wds/NAME' (shards)")
    g.add_argument("--data-dir", default=d.data_dir, help="root with train/ and val/ class sub-folders; for wds: "
                   "a shard directory with _info.json (scripts/make_shards.py) or a shard pattern/URL")
    g.add_argument("-b", "--batch-size", type=int, default=d.batch_size, help="per-process batch size")
    g.add_argument("-j", "--workers", type=int, default=d.workers, help="loader worker processes per process")
    g.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer,
                   help="wds: per-worker sample shuffle buffer (1 = shard order)")
    g.add_argument("--strict-data", action="store_true", default=d.strict_data,
                   help="fail on the first corrupt image or shard member (default: skip it, count it, warn)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    _bool_flag(g, "epochs-as-budget", d.epochs_as_budget,
               "paper convention: run epochs/(T*K) passes over the data (Free-m: epochs/m). Off by default: "
               "--epochs counts passes over the data")
    g.add_argument("--opt", default=d.opt, help="timm optimizer name")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--momentum", type=float, default=d.momentum, help="optimizer momentum")
    g.add_argument("--sched", default=d.sched, help="timm scheduler name (stepped per update)")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    g.add_argument("--min-lr", type=float, default=d.min_lr)
    g.add_argument("--clip-grad", type=float, default=d.clip_grad)
    g.add_argument("--mixed-precision", default=d.mixed_precision, choices=["no", "bf16", "fp16"])
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--train-samples-per-epoch", type=int, default=d.train_samples_per_epoch,
                   help="samples drawn per (nominal) epoch over all processes; default: the whole training split. "
                   "With wds every process runs the same number of steps whatever the shard sizes")
    g.add_argument("--grad-accum-steps", type=int, default=d.grad_accum_steps,
                   help="minibatches per optimizer update (Accelerate gradient accumulation); only for methods "
                   "with one update per minibatch")
    _bool_flag(g, "channels-last", d.channels_last, "channels-last memory format for the model and inputs")
    g.add_argument("--torch-compile", nargs="?", const="inductor", default=d.torch_compile, metavar="BACKEND",
                   help="torch.compile the model (training and attack passes) with this backend (default inductor)")
    g = p.add_argument_group("method")
    g.add_argument("--method", default=d.method, help=f"training method: {', '.join(list_methods())}")
    g.add_argument("--eps", type=parse_fraction, default=d.eps, help="L-inf radius in [0,1] pixels (8/255 ok)")
    g.add_argument("--attack-step", type=parse_fraction, default=d.attack_step, help="step size alpha")
    g.add_argument("--attack-bn", default=d.attack_bn, choices=["eval", "train"], help="BN mode in attack steps")
    g.add_argument("--atcd-T", dest="atcd_T", type=int, default=d.atcd_T, help="T: replays per minibatch")
    g.add_argument("--atcd-K", dest="atcd_K", type=int, default=d.atcd_K, help="K: transitions per trajectory")
    g.add_argument("--cd-lambda", type=float, default=d.cd_lambda, help="lambda in J_cd")
    g.add_argument("--cd-rho", type=float, default=d.cd_rho, help="rho in J_cd (0 = plain CE ascent)")
    g.add_argument("--momentum-decay", type=float, default=d.momentum_decay, help="mu: 0 PGD-like, 1 MI-FGSM-like")
    _bool_flag(g, "mh", d.mh, "Metropolis-Hastings accept/reject per example (--no-mh: ablation)")
    g.add_argument("--mh-temperature", type=float, default=d.mh_temperature, help="tau")
    g.add_argument("--mh-kinetic", type=float, default=d.mh_kinetic, help="kappa_H, weight of K(v)=mean|v|")
    g.add_argument("--atcd-q0", default=d.atcd_q0, choices=["start", "prev"],
                   help="Q0 = output at the trajectory start (spec) or at the previous transition")
    _bool_flag(g, "atcd-restart", d.atcd_restart, "ablation: fresh noise per replay instead of warm start")
    _bool_flag(g, "reuse-grad", d.reuse_grad, "ATCD: the weight pass of replay t also gives the input gradient of "
               "replay t+1's first step (Free's trick): T*K passes per minibatch instead of T*(K+1)")
    g.add_argument("--attack-steps", type=int, default=d.attack_steps, help="r: PGD-AT / TRADES attack steps")
    g.add_argument("--trades-beta", type=float, default=d.trades_beta, help="TRADES beta (robust KL weight)")
    g.add_argument("--free-m", type=int, default=d.free_m, help="Free-AT m: replays per minibatch")
    g.add_argument("--fast-alpha", type=parse_fraction, default=d.fast_alpha, help="Fast-AT FGSM step (1.25*eps)")
    g.add_argument("--yopo-m", type=int, default=d.yopo_m, help="YOPO m: full passes per minibatch")
    g.add_argument("--yopo-n", type=int, default=d.yopo_n, help="YOPO n: first-layer steps per full pass")
    g = p.add_argument_group("model selection (on a holdout carved from the training split)")
    g.add_argument("--holdout", type=int, default=d.holdout,
                   help="training images held out for selection (default 500 if a rule below is on, else 0)")
    g.add_argument("--early-stop", default=d.early_stop, choices=["none", "robust"],
                   help="robust: keep the best holdout-PGD checkpoint as model_best.safetensors (Rice et al. 2020)")
    _bool_flag(g, "co-guard", d.co_guard, "catastrophic-overfitting guard: when holdout PGD accuracy falls more "
               "than --co-drop points below its best, restore the best weights and stop")
    g.add_argument("--co-drop", type=float, default=d.co_drop, help="points of holdout PGD accuracy")
    g = p.add_argument_group("evaluation during training")
    g.add_argument("--eval-samples", type=int, default=d.eval_samples)
    g.add_argument("--eval-attack-steps", type=int, default=d.eval_attack_steps)
    g = p.add_argument_group("output")
    g.add_argument("--output", default=d.output)
    g.add_argument("--experiment", default=d.experiment)
    g.add_argument("--resume", default=d.resume, help="checkpoint dir, or 'auto' for the newest complete one")
    g.add_argument("--overwrite", action="store_true",
                   help="the experiment folder holds an earlier run: delete its checkpoints, weights and summary and "
                        "train afresh (without it such a run is refused; --resume auto continues it)")
    g.add_argument("--checkpoint-keep", type=int, default=d.checkpoint_keep,
                   help="complete checkpoints kept (the oldest is pruned only after a new one is in place)")
    g.add_argument("--checkpoint-every-steps", type=int, default=d.checkpoint_every_steps,
                   help="also checkpoint every N minibatches inside an epoch (0: at epoch ends only)")
    g.add_argument("--max-bad-steps", type=int, default=d.max_bad_steps,
                   help="non-finite losses/gradients skipped before the run stops (keeps the checkpoint from "
                        "before the first one)")
    g.add_argument("--no-progress", action="store_true", default=d.no_progress)
    g.add_argument("--log-data-keys", action="store_true", default=d.log_data_keys,
                   help="debug (wds): write the shard keys each process trained on to data_keys.json")
    return p


def eval_parser() -> argparse.ArgumentParser:
    from .attacks import list_attacks
    d = EvalConfig()
    p = argparse.ArgumentParser(description="Clean and adversarial accuracy of a checkpoint or hub model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--config", default="", help="yaml file of defaults")
    p.add_argument("--model", default=d.model, help="timm name, hf-hub:org/name or local-dir:PATH")
    p.add_argument("--checkpoint", default=d.checkpoint, help="weights (.safetensors) or a training run dir")
    _bool_flag(p, "pretrained", d.pretrained, "load the model's own pretrained weights")
    p.add_argument("--num-classes", type=int, default=d.num_classes)
    p.add_argument("--in-chans", type=int, default=d.in_chans)
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--split", default=d.split)
    p.add_argument("-b", "--batch-size", type=int, default=d.batch_size)
    p.add_argument("-j", "--workers", type=int, default=d.workers)
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="evaluate a fixed class-mixed subset")
    p.add_argument("--eps", type=parse_fraction, default=d.eps, help="L-inf radius in [0,1] pixels (8/255 ok)")
    p.add_argument("--attacks", type=_comma_list, default=",".join(d.attacks),
                   help=f"comma list of: {', '.join(list_attacks())}")
    p.add_argument("--attack-loss", default=d.attack_loss, choices=["ce", "margin"])
    p.add_argument("--attack-steps", type=int, default=d.attack_steps)
    p.add_argument("--attack-step", type=parse_fraction, default=d.attack_step, help="default 2.5*eps/steps")
    p.add_argument("--attack-restarts", type=int, default=d.attack_restarts)
    p.add_argument("--attack-step-schedule", default=d.attack_step_schedule, choices=["constant", "cosine", "step"],
                   help="PGD step size over iterations (step: halved at 50%% and 75%%)")
    p.add_argument("--aa-version", default=d.aa_version, choices=AA_VERSIONS,
                   help="AutoAttack version (rand for randomised models)")
    p.add_argument("--aa-attacks", type=_comma_list, default=",".join(d.aa_attacks),
                   help=f"with --aa-version custom: comma list of {', '.join(AA_ATTACKS)}")
    p.add_argument("--hmc-momentum", type=float, default=d.hmc_momentum, help="HMC attack momentum mu")
    p.add_argument("--hmc-temperature", type=float, default=d.hmc_temperature, help="HMC attack M-H temperature")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--results-file", default=d.results_file)
    p.add_argument("--sanity-samples", type=int, default=d.sanity_samples,
                   help="probe images for the sanity checks (eps=0, monotonicity, white-box vs Square, model "
                        "unchanged); 0 turns them off")
    p.add_argument("--sweep-steps", type=lambda s: tuple(int(v) for v in _comma_list(s)), default=d.sweep_steps,
                   help="robustness curve over attack steps, e.g. 10,20,50,100,200 (writes sweep_steps.csv/.png)")
    p.add_argument("--sweep-eps", type=lambda s: tuple(parse_fraction(v) for v in _comma_list(s)),
                   default=d.sweep_eps, help="robustness curve over eps, e.g. 0,2/255,4/255,8/255")
    p.add_argument("--sweep-attack", default=d.sweep_attack, help="attack used by the sweeps")
    p.add_argument("--update-card", default=d.update_card,
                   help="a model card (README.md path, folder, or org/name) to add these results to")
    p.add_argument("--push-card", action="store_true", default=d.push_card,
                   help="with --update-card org/name: push the updated card to the Hub")
    p.add_argument("--allow-pickle", action="store_true", default=d.allow_pickle,
                   help="accept a non-safetensors --checkpoint (.pth/.pt/.bin), loaded with "
                   "torch.load(weights_only=True)")
    p.add_argument("--strict-data", action="store_true", default=d.strict_data,
                   help="fail on the first corrupt image or shard member (default: skip it, count it, warn)")
    p.add_argument("--no-progress", action="store_true", default=d.no_progress)
    return p


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, cls):
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            with open(pre.config) as f:
                y = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {pre.config!r}: {e.strerror}") from None
        if not isinstance(y, dict):
            raise ConfigError(f"config {pre.config!r} must be a mapping of option: value")
        known = {a.dest for a in parser._actions}
        y = {k.replace("-", "_"): v for k, v in y.items()}
        unknown = sorted(set(y) - known)
        if unknown:
            raise ConfigError(f"config {pre.config!r}: unknown option(s) {unknown}")
        for a in parser._actions:  # yaml values go through the same type conversion as the CLI
            if a.dest in y and a.type is not None and isinstance(y[a.dest], str):
                y[a.dest] = a.type(y[a.dest])
        parser.set_defaults(**y)
    args = vars(parser.parse_args(argv))
    args.pop("config")
    for key in ("attacks", "aa_attacks"):
        if isinstance(args.get(key), str):
            args[key] = _comma_list(args[key])
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in args.items() if k in names}).validate()


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    return _parse(train_parser(), argv, TrainConfig)


def parse_eval_args(argv: list[str] | None = None) -> EvalConfig:
    return _parse(eval_parser(), argv, EvalConfig)


def die(msg: str, code: int = 2):
    """One clear line on stderr and a non-zero exit: the contract for bad input."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)
