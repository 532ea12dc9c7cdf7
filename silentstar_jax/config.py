"""Typed configuration: dataclasses loaded from YAML, dotted `key=value` overrides, strict validation.

Every mistake (unknown key, wrong type, impossible value) raises UserError with one clear line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from silentstar_jax.errors import UserError


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # label in logs and the live display
    out_dir: str = "runs/run"  # run directory: config, logs, checkpoints (resumed when it has records)
    seed: int = 0  # parameters, data order and thought noise


@dataclass(frozen=True)
class ModelConfig:
    """GPT-2 shape (ignored where `init_from` supplies it) and numerics."""

    vocab_size: int = 260  # 260 = 256 bytes + specials for the byte tokenizer
    n_positions: int = 128  # context length, thought steps included (seq_len + chain steps)
    n_embd: int = 64  # width D
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads (n_embd divisible by it)
    layer_norm_epsilon: float = 1e-5  # GPT-2's 1e-5; read from config.json with init_from
    init_from: str | None = None  # HF directory or hub name
    allow_pickle: bool = False  # opt-in for pytorch_model.bin (pickle runs code when loaded)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; parameters stay float32
    remat: bool = False  # jax.checkpoint on each layer of the base pass
    attention: Literal["auto", "xla", "cudnn"] = "auto"  # base-pass attention kernel

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class ChainLayout:
    """The steps of one position's chain, defined once (docs/design.md §3): step 0 = start,
    1..n = thoughts, n+1 = end, n+2..S-1 = the A-1 teacher-forced talk tokens. Step i of the chain at
    base position t has position id t + offset(i) (thinking.positions, §4.1)."""

    n_thoughts: int
    n_ahead: int = 1
    positions: str = "advance"

    @property
    def n_steps(self) -> int:
        return self.n_thoughts + 2 + (self.n_ahead - 1)

    start = 0

    @property
    def thoughts(self) -> range:
        return range(1, self.n_thoughts + 1)

    @property
    def end(self) -> int:
        return self.n_thoughts + 1

    @property
    def talk(self) -> range:
        return range(self.n_thoughts + 2, self.n_steps)

    def kind(self, i: int) -> str:
        if not 0 <= i < self.n_steps:
            raise IndexError(f"step {i} of a {self.n_steps}-step chain")
        return "start" if i == 0 else "thought" if i <= self.n_thoughts else "end" if i == self.end else "talk"

    def offset(self, i):
        """Position id of step i (a Python int or a traced one) minus the base position t. advance: i + 1,
        as if the steps were written after x_t. same: start, thoughts and end all at t + 1, talk tokens
        after it: the end step then sits where it sat in training whatever the test-time count."""
        if self.positions == "advance":
            return i + 1
        return 1 + (i - self.end) * (i > self.end)

    @property
    def position_span(self) -> int:
        """The largest offset: the chain at t uses position ids up to t + position_span."""
        return self.offset(self.n_steps - 1)

    def mixed(self, mix_from: str = "end") -> list[int]:
        """The steps whose outputs are mixed with h0 for look-ahead s = 0..A-1 (thinking.mix_from)."""
        return [self.n_thoughts if mix_from == "last_thought" else self.end, *self.talk]


@dataclass(frozen=True)
class ThinkingConfig:
    """Latent thinking (docs/design.md §3-§7, levers §10). S = n_thoughts + 2 + (n_ahead - 1) chain steps."""

    enabled: bool = True  # false: plain GPT-2, the no-think control (--arm nothink)
    n_thoughts: int = 2  # thoughts per position before each prediction
    n_ahead: int = 1  # look-ahead targets per chain (Quiet-STaR's n_true); 1: the next token only
    # a thought's next input: latent = P(y); token = softmax(lens(y) / feedback_temperature) @ wte, the
    # expected token embedding (a step that learned a look-up on tokens applies it to its own result);
    # token+latent = both summed; sample = the embedding of a token sampled from that softmax (Quiet-STaR's
    # token thoughts; REINFORCE only; the argmax when deterministic); pause = a fixed learned embedding (the control)
    feedback: Literal["latent", "pause", "token", "token+latent", "sample"] = "latent"
    feedback_temperature: float = 1.0  # τ of the lens softmax for token feedback
    # how thoughts learn: reinforce (score function, value baseline), pathwise (through z), both
    estimator: Literal["reinforce", "pathwise", "both"] = "reinforce"
    # REINFORCE baseline: the value head, the leave-one-out mean of K chains, or their average
    baseline: Literal["value", "group_mean", "value+group_mean"] = "value"
    n_samples: int = 1  # K sampled chains per position (group_mean needs K > 1)
    clip_negative_advantages: bool = False  # Quiet-STaR: only chains better than the baseline are reinforced
    sigma_init: float = 0.1  # policy std, relative to the RMS of the token embeddings
    mix_init_bias: float = -4.0  # sigmoid(-4) = 0.018: training starts at the base model (anchor: none)
    # what the thinking prediction is built on (docs/design.md §5.4). none: a gate mixes h0 with the chain's
    # end step; residual: h0 + Δ(end step), Δ zero-initialised, no gate; sequence: n passes of the whole
    # sequence, each re-reading every position's own token plus the thoughts fed back so far (PonderLM),
    # their scale zero-initialised, no gate. Anchored, thinking starts as the base model exactly.
    anchor: Literal["none", "residual", "sequence"] = "none"
    remat: bool = False  # jax.checkpoint on each chain step
    chain: Literal["scan", "unrolled"] = "scan"  # unrolled: faster steps, compile time grows with n
    unroll: int = 1  # chain: scan: steps written out per scan iteration (see run_chain)
    # Training levers (docs/design.md §10)
    seed: Literal["start", "base"] = "start"  # first thought's mean: P(start-step output) or P(h0)
    mix_from: Literal["end", "last_thought"] = "end"  # which step's output the gate mixes with h0
    n_thoughts_train: list[int] = field(default_factory=list)  # [lo, hi]: n drawn per step (empty: n_thoughts)
    think_at: Literal["all", "targets"] = "all"  # targets: chains only where a scored token is predicted
    throttle: bool = False  # the chain's gradient on the shared GPT-2 weights divided by S
    # position ids of a chain's steps (docs/design.md §4.1): advance = t + 1, t + 2, ...; same = every step
    # up to end at t + 1, so no step's position depends on the thought count (test-time scaling)
    positions: Literal["advance", "same"] = "advance"
    # the progressive loss (DeepThinking): at each training step the first j ~ U{0..n-1} thoughts are given
    # as constants (their inputs, and the output thought j+1 reads, carry no gradient), so each step learns
    # to improve on whatever state it is handed rather than co-adapting with the steps before it
    progressive: bool = False

    def layout(self, n_thoughts: int | None = None) -> ChainLayout:
        return ChainLayout(self.n_thoughts if n_thoughts is None else n_thoughts, self.n_ahead, self.positions)

    @property
    def n_steps(self) -> int:
        return self.layout().n_steps


@dataclass(frozen=True)
class LossConfig:
    base: float = 1.0  # alpha_base
    think: float = 1.0  # alpha_think
    policy: float = 1.0  # beta
    value: float = 1.0  # gamma
    # Not in Quiet-STaR: CE of the thought path alone (unmixed). It trains the chain even while
    # the mixing weight is ~0, which otherwise starves it of gradient (see README, results).
    thought: float = 0.0
    # Not in Quiet-STaR: CE of thought j's logit lens (its step output) toward the task's intermediate
    # target j (data thought_targets), weight annealed linearly to 0 between the two fractions of
    # train.steps (docs/design.md §10). [1, 1]: never annealed.
    thought_supervision: float = 0.0
    # [start_frac, end_frac] of train.steps over which thought_supervision goes to 0
    supervision_anneal: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # s thoughts per intermediate target: target j supervises thought s*j (a one-layer look-up that
    # needs two attention steps per hop, as in binding: find the statement, then read its right side)
    supervision_stride: int = 1


@dataclass(frozen=True)
class DataConfig:
    # task: built-in generator; hf: a datasets hub dataset; files: local .txt / .jsonl / parquet
    source: Literal["task", "hf", "files"] = "task"
    task: Literal["multiply", "add", "prosqa", "hops", "binding"] = "multiply"  # built-in task family for source=task
    digits_a: int = 2  # multiply, add
    digits_b: int = 2  # multiply, add: digits of the second operand
    n_nodes: int = 12  # prosqa
    n_symbols: int = 16  # hops: table size (2..26)
    hops: int = 2  # hops, binding: look-ups per example (1..9)
    hops_min: int | None = None  # hops, binding: k uniform in hops_min..hops; None: always hops
    show_hops: bool = False  # hops: write k in the prompt (needed to mix hop counts)
    single_cycle: bool = False  # hops: f is one cycle through every letter (f^k(q) != q, k < n)
    chain: int = 1  # hops: answers per problem, each f^k of the one before
    hops_weights: list[float] = field(default_factory=list)  # training's k drawn with these weights
    # (one per k in hops_min..hops); empty: uniform
    eval_hops_min: int | None = None  # hops, binding: the held-out set's k from eval_hops_min..hops
    # (= hops: the hardest k only); None: as hops_min
    hops_curriculum: list[float] = field(default_factory=list)  # easy to hard: k joins training at this
    # fraction of train.steps (one per k in hops_min..hops, first 0)
    n_vars: int = 8  # binding: variables (max(2, queries)*hops..26)
    queries: int = 1  # binding: distinct query variables per problem, each answered
    n_train: int = 20000  # task: training problems drawn (held-out problems never among them)
    n_eval: int = 500  # task: held-out problems
    dataset: str | None = None  # hub name for source=hf
    dataset_config: str | None = None  # source=hf: the dataset's configuration name
    split: str = "train"  # source=hf: training split
    eval_split: str | None = None  # default: hold out the tail of `split` (streaming: its head)
    eval_docs: int = 200  # streaming: documents held out for evaluation
    streaming: bool = False  # source=hf: stream instead of downloading the whole split
    files: list[str] = field(default_factory=list)  # source=files: paths (.txt: lines; .jsonl: text_field; .parquet)
    # source=files: held-out files, evaluation's text (training never reads them); empty: the last 5% of
    # data.files' blocks
    eval_files: list[str] = field(default_factory=list)
    files_curriculum: list[float] = field(default_factory=list)  # easy to hard by file: data.files[i] joins
    # training at this fraction of train.steps (one per file, first 0)
    text_field: str = "text"
    skip_bad_lines: bool = False  # .json/.jsonl files: a line that is not a JSON object with text_field
    # stops with file:line (false), or is skipped and counted (true)
    tokenizer: str = "byte"  # "byte" or an HF tokenizer dir / hub name
    shuffle_seed: int = 0  # order of training examples / documents

    @property
    def train_hops(self) -> range:
        """Training's hop counts k (hops, binding): hops_min..hops (one weight / start fraction per k)."""
        return range(self.hops_min or self.hops, self.hops + 1)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # peak learning rate (warmup, then cosine to lr * min_lr_ratio)
    # lr multiplier for the thinking heads (ThinkParams: start/end/pause, P, σ, gate, value)
    thinking_lr_mult: float = 1.0
    warmup_steps: int = 50  # linear warmup from 0
    min_lr_ratio: float = 0.1  # the cosine decay's floor, as a fraction of lr
    weight_decay: float = 0.01  # AdamW decay, on matrices only (not biases or layer-norm scales)
    b1: float = 0.9  # Adam β1
    b2: float = 0.95  # Adam β2
    grad_clip: float = 1.0  # global gradient norm clip


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # sequences per step (global, across devices)
    seq_len: int = 32  # tokens per sequence (a block is seq_len + 1 with its next-token target)
    grad_accum: int = 1  # micro-batches per step (the same update as one big batch)
    log_every: int = 10  # steps between metrics.jsonl lines
    eval_every: int = 0  # steps between held-out evaluations (evals.jsonl); 0: at the end only
    save_every: int = 500  # steps between checkpoints; 0: at the end (and on SIGTERM / Ctrl-C) only
    # a non-finite loss or gradient: the update is never applied; "stop" ends the run (exit code 3),
    # "skip" goes on with the next batch
    on_nonfinite: Literal["stop", "skip"] = "stop"


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: all devices not used by fsdp
    fsdp: int = 1  # devices each parameter is sharded over
    # several hosts: jax.distributed.initialize() (coordinator from the cluster environment:
    # SLURM, Open MPI, TPU, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)
    distributed: bool = False


@dataclass(frozen=True)
class CheckpointConfig:
    keep: int = 3  # newest checkpoints kept (older ones deleted after a good save)
    async_save: bool = True  # write checkpoints in a background thread while training goes on


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    thinking: ThinkingConfig = field(default_factory=ThinkingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# ---------------------------------------------------------------- building from dicts


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value against a field's annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _coerce(value, tp, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp} at {where}")


# Keys of removed fields that older runs' config.yaml still holds: accepted and ignored at the value the code
# now hard-wires (any value for _ANY), refused otherwise, so a setting is never dropped unseen. Why each went:
# results/README.md ("Removed knobs").
_ANY = object()
_RETIRED_KEYS = {
    "train.eval_batches": _ANY,
    "thinking.reward": "logprob_gain",
    "thinking.normalize_advantages": False,
    "thinking.sigma_per_dim": False,
    "thinking.emb_grad_scale": 100.0,
    "thinking.log_sigma_min": -10.0,
    "thinking.log_sigma_max": 2.0,
}


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if path in _RETIRED_KEYS:
            if _RETIRED_KEYS[path] is not _ANY and value != _RETIRED_KEYS[path]:
                raise UserError(
                    f"'{path}' was removed (only {_RETIRED_KEYS[path]!r}, now built in, is accepted; "
                    f"see results/README.md), got {value!r}"
                )
            continue
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{(where + '.') if where else ''}{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key '{path}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that build Python objects) that refuses a key written twice in
    one mapping (`optim: {lr: 2e-3, lr: 5}`, two `train:` blocks), which plain YAML loading resolves
    silently to the last one. Merge keys (`<<:`) may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}  # key -> the line it was first written on
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line}); keep one",
                            key_node.start_mark,
                        )
                    seen[key] = line
                except TypeError:  # an unhashable key: the base loader says so
                    continue
        return super().construct_mapping(node, deep)


def load_yaml(stream) -> Any:
    """Every config read (a config file, a run's saved config.yaml, an override's value) goes through here."""
    return yaml.load(stream, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


def _parse_scalar(text: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b=c` strings applied onto a nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key=value (e.g. train.steps=20)")
        key, text = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: '{p}' is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return raw


def from_dict(raw: dict) -> Config:
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def load_config(path: str | None, overrides: list[str] = ()) -> Config:
    """YAML file (or defaults when path is None) + overrides -> validated Config."""
    raw: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                raw = load_yaml(f) or {}  # safe: YAML tags that build Python objects are refused
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a text file (expected a YAML config)") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror})") from None
        if not isinstance(raw, dict):
            raise UserError(
                f"{path}: a config must be a YAML mapping (sections like train: ...), got a {type(raw).__name__}"
            )
    return from_dict(apply_overrides(raw, list(overrides)))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate_model(m: ModelConfig) -> None:
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        if getattr(m, name) < 1:
            raise UserError(f"model.{name} must be >= 1, got {getattr(m, name)}")
    if m.n_embd % m.n_head:
        raise UserError(f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")


def validate_thinking(t: ThinkingConfig, m: ModelConfig | None, seq_len: int) -> None:
    """m None: the model's shape is not known yet (init_from); the context check waits for it."""
    if not t.enabled:
        return
    if not t.feedback_temperature > 0:
        raise UserError(f"thinking.feedback_temperature must be > 0, got {t.feedback_temperature}")
    if t.feedback == "sample" and t.estimator != "reinforce":
        raise UserError(
            f"thinking.feedback=sample draws discrete tokens, which have no pathwise gradient: "
            f"it needs thinking.estimator=reinforce, got {t.estimator}"
        )
    if t.n_thoughts < 0:
        raise UserError(f"thinking.n_thoughts must be >= 0, got {t.n_thoughts}")
    if t.n_ahead < 1:
        raise UserError(f"thinking.n_ahead must be >= 1, got {t.n_ahead}")
    if t.n_samples < 1:
        raise UserError(f"thinking.n_samples must be >= 1, got {t.n_samples}")
    if "group_mean" in t.baseline and t.n_samples < 2:
        raise UserError(f"thinking.baseline={t.baseline} needs thinking.n_samples >= 2")
    if t.unroll < 1:
        raise UserError(f"thinking.unroll must be >= 1, got {t.unroll}")
    if t.n_thoughts_train:
        if len(t.n_thoughts_train) != 2 or not 0 <= t.n_thoughts_train[0] <= t.n_thoughts_train[1]:
            raise UserError(f"thinking.n_thoughts_train must be [lo, hi] with 0 <= lo <= hi, got {t.n_thoughts_train}")
    if t.mix_from == "last_thought" and t.n_thoughts < 1:
        raise UserError("thinking.mix_from=last_thought needs thinking.n_thoughts >= 1")
    if t.anchor == "sequence":
        clash = [
            (t.n_ahead != 1, f"n_ahead = {t.n_ahead} (passes predict the next token only: 1)"),
            (t.think_at != "all", "think_at = targets (every position takes part in every pass)"),
            (t.feedback == "sample", "feedback = sample (use latent, token, token+latent or pause)"),
            (t.progressive, "progressive"),
            (bool(t.n_thoughts_train), "n_thoughts_train"),
        ]
        for bad, what in clash:
            if bad:
                raise UserError(f"thinking.anchor=sequence does not support thinking.{what}")
        return  # passes use the token's own position ids: no span to check
    lay = t.layout(max([t.n_thoughts] + list(t.n_thoughts_train)))
    span = lay.position_span
    if m is not None and seq_len + span > m.n_positions:
        what = (
            "chain steps (n_thoughts + 1 + n_ahead)"
            if t.positions == "advance"
            else "chain position ids (positions: same: n_ahead)"
        )
        raise UserError(
            f"sequence length {seq_len} + {span} {what} = {seq_len + span} exceeds model.n_positions = {m.n_positions}"
        )


def check_eval_thoughts(cfg: Config, n: int) -> None:
    """Raises UserError unless an evaluation of cfg with n thoughts (test-time scaling) fits the context."""
    if n < 0:
        raise UserError(f"--thoughts must be >= 0, got {n}")
    # mix_from=last_thought with 0 thoughts mixes the start step
    validate(
        dataclasses.replace(
            cfg,
            thinking=dataclasses.replace(
                cfg.thinking, n_thoughts=n, n_thoughts_train=[], mix_from=cfg.thinking.mix_from if n else "end"
            ),
        )
    )


def validate(cfg: Config) -> None:
    validate_model(cfg.model)
    # the model runs on blocks of seq_len + 1 tokens (inputs and their next-token targets)
    validate_thinking(cfg.thinking, None if cfg.model.init_from else cfg.model, cfg.train.seq_len + 1)
    for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every"):
        if getattr(cfg.train, name) < 1:
            raise UserError(f"train.{name} must be >= 1, got {getattr(cfg.train, name)}")
    for name in ("save_every", "eval_every"):
        if getattr(cfg.train, name) < 0:
            raise UserError(f"train.{name} must be >= 0 (0 = never), got {getattr(cfg.train, name)}")
    if cfg.data.n_eval < 1:
        raise UserError(f"data.n_eval must be >= 1 (the final evaluation needs examples), got {cfg.data.n_eval}")
    if not cfg.model.init_from and cfg.train.seq_len + 1 > cfg.model.n_positions:
        raise UserError(
            f"train.seq_len + 1 = {cfg.train.seq_len + 1} tokens per block exceeds "
            f"model.n_positions = {cfg.model.n_positions}"
        )
    for name, value in dataclasses.asdict(cfg.optim).items():  # nan / inf can never train
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"optim.{name} must be a finite number, got {value}")
    if cfg.optim.lr <= 0:
        raise UserError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.mesh.fsdp < 1 or cfg.mesh.data == 0 or cfg.mesh.data < -1:
        raise UserError("mesh.data must be -1 or >= 1 and mesh.fsdp >= 1")
    if cfg.data.shuffle_seed < 0:
        raise UserError(f"data.shuffle_seed must be >= 0, got {cfg.data.shuffle_seed}")
    d = cfg.data
    n_k = len(d.train_hops)
    if d.hops_weights and (len(d.hops_weights) != n_k or min(d.hops_weights) < 0 or not sum(d.hops_weights) > 0):
        raise UserError(
            f"data.hops_weights must be one non-negative weight per k in data.hops_min..data.hops "
            f"({n_k} here) with a positive sum, got {d.hops_weights}"
        )
    schedule = lambda c: c[0] == 0 and all(a <= b for a, b in zip(c, c[1:])) and c[-1] < 1  # first 0, up, < 1
    if d.hops_curriculum:
        c = d.hops_curriculum
        if d.source != "task" or d.task not in ("hops", "binding") or len(c) != n_k or not schedule(c):
            raise UserError(
                f"data.hops_curriculum must be one start fraction per k in data.hops_min..data.hops "
                f"({n_k} here) of a hops or binding task, the first 0, non-decreasing and < 1, "
                f"got {c}"
            )
    if d.files_curriculum:
        c = d.files_curriculum
        if d.source != "files" or d.streaming or len(c) != len(d.files) or not schedule(c):
            raise UserError(
                f"data.files_curriculum must be one start fraction per file of data.files "
                f"({len(d.files)} here; data.source: files, not streaming), the first 0, "
                f"non-decreasing and < 1, got {c}"
            )
    if d.eval_files and (d.source != "files" or d.streaming or d.files_curriculum):
        raise UserError("data.eval_files is for data.source: files (not streaming, no data.files_curriculum)")
    if d.eval_hops_min is not None and not 1 <= d.eval_hops_min <= d.hops:
        raise UserError(f"data.eval_hops_min must be in 1..data.hops = 1..{d.hops}, got {d.eval_hops_min}")
    if not cfg.thinking.enabled and cfg.loss.base == 0:
        raise UserError(
            "loss.base is 0 with thinking off: the model would have no loss (the no-think control "
            "of a loss.base: 0 recipe trains with loss.base=1, its only loss)"
        )
    lo_hi = cfg.loss.supervision_anneal
    if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
        raise UserError(
            f"loss.supervision_anneal must be [start, end] fractions with 0 <= start <= end <= 1, got {lo_hi}"
        )
    if cfg.loss.supervision_stride < 1:
        raise UserError(f"loss.supervision_stride must be >= 1, got {cfg.loss.supervision_stride}")
    if cfg.checkpoint.keep < 1:
        raise UserError(f"checkpoint.keep must be >= 1, got {cfg.checkpoint.keep}")
