"""Config flows once: yaml (-c) sets defaults, the CLI overrides, the result is a frozen dataclass.

Run-wide options are declared here; each training method's and attack's own options are declared next to its code
(`Options` dataclasses, see `atcd.options`) and gathered from the registries. A yaml key that is not a known option
is an error (timm's `set_defaults(**yaml)` accepts typos silently), and so is an option of another method or of an
attack that is not run: nothing given is silently ignored.
"""
import argparse  # noqa: I001  (run_options on three lines: the module stays under its size limit)
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .attacks import AttackConfig, attack_options_class, list_attacks
from .data import builtin_datasets, check_data_dir, check_transform_options, dataset_eps, is_wds, resolve_dataset
from .errors import ConfigError
from .methods import get_method_class, list_methods
from .models.sources import check_model_name, check_sources, default_eps, expand_models
from .optim import check_optimizer
from .options import (
    add_options,
    add_owned_groups,
    check_options,
    flag_of,
    option_fields,
    owners_of,
    parse_with_yaml,
    refuse_foreign,
    set_help,
)
from .run_options import EVAL_EXAMPLES, EVAL_FIRST, EVAL_GROUPS, TRAIN_EXAMPLES, TRAIN_FIRST, TRAIN_GROUPS
from .run_options import EvalOptions, TrainOptions, add_timm_spellings, resolve_lr, resolve_timm_spellings
from .run_options import run_parser, with_run_flags
from .schedule import check_schedule
from .trackers import check_trackers

__all__ = ["ConfigError", "EvalConfig", "TrainConfig", "parse_eval_args", "parse_train_args"]


@dataclass(frozen=True)
class TrainConfig(TrainOptions):
    """Run-wide training options (`TrainOptions`) plus the chosen method's own `Options` (`method_opts`)."""
    method_opts: Any = None

    def __post_init__(self):
        object.__setattr__(self, "dataset", resolve_dataset(self.dataset, self.data_dir))  # timm: --data-dir = folder
        object.__setattr__(self, "lr", resolve_lr(self))  # --lr, else timm's --lr-base rule, else 0.05
        if self.eps is None:  # the dataset's (mnist-mini: 0.3); folders and shards define none: validate() says so
            object.__setattr__(self, "eps", dataset_eps(self.dataset))
        if self.method not in list_methods():
            return  # validate() says so
        if self.method_opts is None:
            object.__setattr__(self, "method_opts", get_method_class(self.method).Options())
        if self.attack_step is None and self.eps is not None:  # the method's own rule of eps (and of its steps)
            object.__setattr__(self, "attack_step", get_method_class(self.method).default_attack_step(self))
        if self.eps_warmup_epochs is None:  # the method's rule (ATCD at eps 0.3 does not train without one)
            m = get_method_class(self.method)
            passes = -(-self.epochs // m.budget_divisor(self.method_opts)) if self.epochs_as_budget else self.epochs
            warmup = m.default_eps_warmup(self, passes) if self.eps else 0.0
            object.__setattr__(self, "eps_warmup_epochs", float(warmup))

    @classmethod
    def of(cls, **flat) -> "TrainConfig":
        """From a flat mapping of option names (args.yaml's shape); the method's options are picked out of it."""
        return _split_method_options(flat, given=set(flat))

    def flat(self) -> dict:
        """Run-wide and method options in one flat mapping: `args.yaml`, `train_atcd.py -c args.yaml` reads it."""
        own = dataclasses.asdict(self.method_opts) if self.method_opts is not None else {}
        return {**{f.name: getattr(self, f.name) for f in option_fields(TrainOptions)}, **own}

    @property
    def streamed(self) -> bool:
        """True when the data comes from WebDataset shards (`--dataset wds` / `wds/NAME`)."""
        return is_wds(self.dataset)

    @property
    def holdout_size(self) -> int:
        """Training images held out for model selection: --holdout, else 500 when a selection rule needs them."""
        if self.holdout is not None:
            return self.holdout
        return 500 if (self.early_stop != "none" or self.co_guard) else 0

    def validate(self) -> "TrainConfig":
        if self.method not in list_methods():
            raise ConfigError(f"unknown method {self.method!r}; available: {list_methods()}")
        check_options(self)
        check_options(self.method_opts)
        check_data_dir(self.dataset, self.data_dir)  # (a data error before the eps that data would define)
        if self.eps is None:
            raise ConfigError(f"--eps is required: the {self.dataset} dataset defines no L-inf radius; give e.g. --eps "
                              f"8/255 (in [0,1] pixel units)")
        method = get_method_class(self.method)
        ms = list(self.decay_milestones or ())
        checks = [
            (not (self.early_stop != "none" or self.co_guard) or self.holdout_size > 0,
             "--early-stop/--co-guard select on a holdout carved from the training split: give --holdout N > 0"),
            (self.train_samples_per_epoch is None or self.train_samples_per_epoch >= self.batch_size,
             f"--train-samples-per-epoch must be >= the batch size (got {self.train_samples_per_epoch})"),
            (not self.streamed or self.holdout_size == 0,
             ("--holdout/--early-stop/--co-guard carve a holdout from a map-style training split; a streamed "
              "(--dataset wds) split cannot be carved: select on a map-style dataset or drop these options")),
            (not self.log_data_keys or self.streamed, "--log-data-keys needs --dataset wds (shard sample keys)"),
            (self.resume in (None, "", "auto") or os.path.isdir(self.resume),
             f"--resume {self.resume!r}: no such checkpoint directory (give a checkpoint-* dir or 'auto')"),
            (not (self.overwrite and self.resume), "--overwrite replaces the run that --resume continues: give one"),
            (self.eps_warmup_epochs == 0 or method.default_attack_step(self) is not None,
             f"--eps-warmup-epochs ramps the attack's eps-ball; --method {self.method} attacks nothing"),
            (bool(ms) == (self.sched == "multistep"), (f"--sched multistep decays at --decay-milestones: give both "
                                                       f"or neither (got --sched {self.sched}"
                                                       f"{' --decay-milestones' if ms else ''})")),
            (ms == sorted(set(ms)) and all(m > 0 for m in ms),
             f"--decay-milestones must be increasing epochs > 0 (got {' '.join(f'{m:g}' for m in ms)})"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if method.sign_steps and self.eps > 0 and self.attack_step > 2 * self.eps:  # the step would saturate the ball
            raise ConfigError(f"--attack-step {self.attack_step:g} > 2 x --eps {self.eps:g}: every sign step of "
                              f"--method {self.method} would jump across the eps-ball; give a step <= eps, e.g. "
                              f"--attack-step "
                              f"{self.eps / 4:.4g} (or leave it out: the method's rule of eps)")
        check_transform_options(self, builtin_datasets())
        check_trackers(self.log_with)
        check_optimizer(self)
        check_schedule(self)
        method.check(self)
        upb = method.updates_per_batch(self.method_opts)
        if self.grad_accum_steps > 1 and upb > 1:  # accumulation would average one minibatch's successive updates
            raise ConfigError(f"--grad-accum-steps {self.grad_accum_steps} cannot be combined with --method "
                              f"{self.method}, which makes {upb} optimizer updates per minibatch; raise the batch "
                              f"size or the number of processes instead")
        if self.torch_compile:
            import torch._dynamo
            if self.torch_compile not in torch._dynamo.list_backends(exclude_tags=()):
                raise ConfigError(f"unknown --torch-compile backend {self.torch_compile!r}; available: "
                                  f"{torch._dynamo.list_backends(exclude_tags=())}")
        check_model_name(self.model)
        return self


@dataclass(frozen=True)
class EvalConfig(EvalOptions):
    """Run-wide evaluation options plus the attack settings (`attack`, with the options of the attacks run)."""
    attack: AttackConfig = field(default_factory=AttackConfig)

    def __post_init__(self):
        object.__setattr__(self, "dataset", resolve_dataset(self.dataset, self.data_dir))  # timm: --data-dir = folder

    @property
    def models(self) -> tuple[str, ...]:
        """The models evaluated: `--model` (a comma list, local-dir: globs expanded) or `--model-list`."""
        return expand_models(self.model, self.model_list, pretrained=self.pretrained)

    def validate(self) -> "EvalConfig":
        unknown = [a for a in (*self.attacks, self.sweep_attack) if a not in list_attacks()]
        if unknown:
            raise ConfigError(f"unknown attack(s) {unknown}; available: {list_attacks()}")
        check_options(self)
        check_options(self.attack)
        for opts in self.attack.options.values():
            check_options(opts)
        a = self.attack
        if a.eps > 0 and a.step_size > 2 * a.eps:
            raise ConfigError(f"--attack-step {a.step_size:g} > 2 x --eps {a.eps:g}: every sign step would "
                              f"jump across the eps-ball; use a step <= eps (default 2.5*eps/steps)")
        if any(v < 1 for v in self.sweep_steps) or any(not 0 <= v <= 1 for v in self.sweep_eps):
            raise ConfigError(f"--sweep-steps must be >= 1 and --sweep-eps in [0,1] (got {self.sweep_steps}, "
                              f"{self.sweep_eps})")
        check_transform_options(self, builtin_datasets())
        check_data_dir(self.dataset, self.data_dir)
        if self.push_card and not self.update_card:
            raise ConfigError("--push-card needs --update-card org/name")
        for name in self.models:
            check_model_name(name)
        check_sources(self)
        return self


def train_parser() -> argparse.ArgumentParser:
    p = run_parser("Adversarial training (ATCD and baselines) of any timm model.", TrainOptions, TRAIN_GROUPS,
                   TRAIN_FIRST, TRAIN_EXAMPLES)
    set_help(p, "method", f"training method: {', '.join(list_methods())} (each one's options: groups below)")
    add_timm_spellings(p)
    add_owned_groups(p, {m: get_method_class(m).Options for m in list_methods()}, "method")
    return p


def eval_parser() -> argparse.ArgumentParser:
    p = run_parser("Clean and adversarial accuracy of a checkpoint or hub model.", EvalOptions, EVAL_GROUPS, EVAL_FIRST,
                   EVAL_EXAMPLES)
    add_options(next(g for g in p._action_groups if g.title == "main options"), AttackConfig, only=["eps"])
    add_options(p.add_argument_group("attack settings shared by the attacks"), AttackConfig, skip=["eps"])
    set_help(p, "attacks", f"comma list of: {', '.join(list_attacks())}")
    p.set_defaults(eps=None)  # parse_eval_args: the models' cards, else the dataset, define it; else it is required
    set_help(p, "eps", "L-inf radius in [0,1] pixels (8/255 ok); default: what the models' results.json record, else "
             "the dataset's (mnist-mini: 0.3); required otherwise")
    add_owned_groups(p, {a: attack_options_class(a) for a in list_attacks()}, "attack")
    return p


def _split_method_options(flat: dict, given: set[str]) -> TrainConfig:
    run = {f.name: flat[f.name] for f in option_fields(TrainOptions) if f.name in flat}
    method = run.get("method", TrainOptions.method)
    if method not in list_methods():
        raise ConfigError(f"unknown method {method!r}; available: {list_methods()}")
    classes = {m: get_method_class(m).Options for m in list_methods()}
    mine = {f.name for f in option_fields(classes[method])}
    flags = {f.name: flag_of(f) for c in classes.values() for f in option_fields(c)}
    refuse_foreign(given, owners_of(classes), mine, "--method", f"--method {method}", flags)
    unknown = sorted(set(flat) - set(run) - set(flags))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}")
    opts = classes[method](**{k: v for k, v in flat.items() if k in mine})
    return TrainConfig(**run, method_opts=opts)


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    args, given = parse_with_yaml(train_parser(), argv)
    return _split_method_options(resolve_timm_spellings(args), given - {"amp", "amp_dtype", "log_wandb"}).validate()


def parse_eval_args(argv: list[str] | None = None) -> EvalConfig:
    argv = with_run_flags(list(sys.argv[1:] if argv is None else argv))
    args, given = parse_with_yaml(eval_parser(), argv)
    run = {f.name: args[f.name] for f in option_fields(EvalOptions)}
    classes = {a: attack_options_class(a) for a in list_attacks()}
    owned = owners_of(classes)
    flags = {f.name: flag_of(f) for c in classes.values() if c is not None for f in option_fields(c)}
    ran = [a for a in dict.fromkeys((*run["attacks"], run["sweep_attack"])) if a in classes]
    mine = {f.name for a in ran if classes[a] is not None for f in option_fields(classes[a])}
    refuse_foreign(given, owned, mine, "attack", f"--attacks {','.join(run['attacks'])}", flags)
    options = {a: classes[a](**{k: v for k, v in args.items() if k in {f.name for f in option_fields(classes[a])}})
               for a in ran if classes[a] is not None}
    if args["eps"] is None and run.get("protocol"):  # the protocol fixes eps (atcd.protocols.resolve_protocol)
        from .protocols import protocol_eps
        args["eps"] = protocol_eps(run)
    if args["eps"] is None:
        data = resolve_dataset(run["dataset"], run["data_dir"])
        check_data_dir(data, run["data_dir"])  # (a data error before the eps that data would define)
        args["eps"] = default_eps(expand_models(run["model"], run["model_list"], pretrained=run["pretrained"]),
                                  dataset_eps(data), data)
    attack = AttackConfig(**{f.name: args[f.name] for f in option_fields(AttackConfig)}, options=options)
    return EvalConfig(**run, attack=attack).validate()
