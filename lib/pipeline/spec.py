"""The audit spec, salaudit's one configuration: what an audit (or an explain, attack or
evaluate run) computes, where it writes and on what. Every default lives on the model's fields;
`DEFAULT_SPEC` is the same defaults as commented YAML (`salaudit init` writes it, and a test
checks that it parses to exactly the fields' defaults).

Validated with pydantic; every error names the field and what it allows. Credentials never
live in a spec: storage options carry endpoints and settings, keys come from the environment.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..attacks.catalogue import attack_params, parse_attack
from ..engine.batching import parse_bytes
from ..errors import SalauditError
from ..inputs.selection import MODES, Selection
from ..inputs.uris import is_remote
from ..methods.registry import (
    DEFAULT_METHODS,
    PAPER_BASES,
    Method,
    decoy_generator,
    get_method,
    method_info,
    registry,
)
from ..metrics.catalogue import check_thresholds, families
from ..metrics.masks import METRIC_BASELINES
from ..store.schema import report_location

CREDENTIAL_KEYS = {
    "key",
    "secret",
    "token",
    "password",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "session_token",
}
CLUSTER_KINDS = ("auto", "local", "cuda")
STORE_DTYPES = ("float32", "float16")  # of maps and decoy populations (store.dtype)
DEFAULT_ALPHA = 0.05
# The default audit's choices (the model's defaults below, and DEFAULT_SPEC's)
DEFAULT_DECOYS = {"dance": {"decoys": 32}}
DEFAULT_ATTACKS = ["topk@grad", "mass-center@grad", "pgd"]
DEFAULT_ATTACK_PARAMS = {"topk": {"steps": 30}, "mass-center": {"steps": 30}, "pgd": {"steps": 10}}
DEFAULT_RADII = [2.0, 8.0, 32.0]

DEFAULT_SPEC = """\
# salaudit audit spec (salaudit init writes this file; salaudit audit SPEC runs it).
# The embedded default: 16 test images of the builtin digit scenes, the classic gradient
# methods, decoy-enhanced grad and RelEx, two saliency attacks on grad and PGD on the
# prediction, every applicable metric, and the HTML report beside the store. About 7 minutes
# on 2 CPU cores. A field left out keeps the value below; a spec that gives its own methods
# starts from no decoy and boundary settings, one that gives its own attacks from no
# attack_params and radii.

model: builtin:digit-scenes-cnn        # builtin:NAME | torchvision:ARCH?weights=URL | python:MOD:FN
data: builtin:digit-scenes             # builtin:NAME | folder:PATH_OR_S3_URL | zarr:URL
selection:
  mode: random                         # first | random | stratified
  n: 16                                # number of samples (omit for all)
  correct_only: false                  # only samples the model classifies correctly
seed: 0                                # seeds the selection and every random draw

methods:                               # name: {parameter: value}; {} keeps the defaults
  grad: {}
  ig: {n_steps: 16}
  smoothgrad: {n_samples: 10}
  dance-grad: {}
  relex: {}
decoys:                                # per decoy generator (dance, blur, ...)
  dance: {decoys: 32}                  # the population size at any input size (docs/decoys.md)
boundary: {}                           # boundary search of bsm and big
keep_decoys: false                     # store decoy populations (they grow fast)

attacks: [topk@grad, mass-center@grad, pgd]   # ATTACK@METHOD; pgd attacks the prediction
attack_params:
  topk: {steps: 30}
  mass-center: {steps: 30}
  pgd: {steps: 10}
radii: [2, 8, 32]                      # pgd's L_inf radii in units of 1/255
metrics: null                          # null: every applicable family; or a list, e.g. [fidelity]
metric_baseline: mean                  # mean | zero | blur: what replaces removed pixels

report: null                           # the HTML report's folder or s3:// URL (null: beside the
                                       # store, <store>-report; false: no report)
compare:                               # audits over time: compare with an earlier audit's store
  baseline: null                       # its URL (null: no comparison)
  thresholds: {}                       # metric: largest tolerated worsening of a method's mean,
                                       # e.g. {fidelity: 0.05}; beyond it (and p_holm < alpha)
  alpha: 0.05                          # the audit fails, naming what regressed
store:
  url: runs/audit                      # a local folder or s3://bucket/prefix
  storage_options: {}                  # e.g. {endpoint_url: http://minio:9000}; keys come
                                       # from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
  dtype: float32                       # float32 | float16: maps and decoy populations
shard_size: 8                          # samples per task and per Zarr chunk
cluster: auto                          # auto | local | cuda | tcp://SCHEDULER:8786
workers: null                          # worker processes (null: one per GPU, or 2 on a CPU)
device: auto                           # auto | cpu | cuda
precision: fp32                        # fp32 | bf16 | fp16: the model's forward under autocast
micro_batch: auto                      # rows per pass through the model, or auto: sized by a
memory_budget: null                    # probe to this budget (e.g. 4GiB; null: a share of free)
                                       # (gradients and sums stay fp32)
retries: 2                             # retries of transient faults (storage, lost worker, OOM)
lease_wait: 0                          # seconds to wait for another audit's lease on the store
"""


def check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise SalauditError(f"alpha {alpha:g} is not a significance level; give one in (0, 1)")
    return alpha


# The P = 1 specs' methods: each base, its decoy form and the papers' three controls (fig. 3B)
P1_METHODS = "".join(
    f"  {prefix}{base}: {{{', '.join(f'{k}: {v}' for k, v in params.items())}}}\n"
    for prefix in ("", "dance-", "constant-", "noise-", "dance-mean-")
    for base, params in PAPER_BASES.items()
)

TABULAR_SPEC = """\
# salaudit audit spec for a table (salaudit init --kind tabular writes this file).
# The embedded tabular default: 64 test rows of scikit-learn's breast-cancer table (30 features
# MinMax-scaled to [0, 1]) and the two-layer MLP salaudit trains on it on first use; the
# gradient methods, their decoy-enhanced forms and the papers' three controls (constant and
# noise decoys, mean aggregation), every decoy swapping one feature (P = 1, m = 1: 60 optimised
# decoys, 30 per control), RelEx and BIG, top-k on grad and PGD on the prediction, and every
# metric that applies to tables. About two minutes on 2 CPU cores. A field left out keeps
# salaudit init's default (salaudit init writes them all, commented).

model: builtin:breast-cancer-mlp      # python:MOD:FN?shape=F takes a table of F features
data: builtin:breast-cancer           # csv:PATH?label=COLUMN | parquet:PATH?label=COLUMN
selection: {mode: random, n: 64, correct_only: false}
seed: 0

methods:
{bases_and_controls}  relex: {}
  big: {}
decoys:                               # one feature per mask: 2 x 30 optimised, 30 per control
  dance: {decoys: 60}
  constant: {decoys: 30}              # the feature's training mean in the mask
  noise: {decoys: 30}
attacks: [topk@grad, pgd]             # mass-center and target are spatial: images only
attack_params:
  topk: {steps: 30, fraction: 0.1}    # the top 3 of 30 features
  pgd: {steps: 10}
radii: [2, 8, 32]                     # L_inf radii in units of 1/255 of the feature range
metrics: null                         # every family that applies to tables
metric_baseline: mean                 # mean: removed features take their training mean

store:
  url: runs/audit-tabular
shard_size: 16
""".replace("{bases_and_controls}", P1_METHODS)
TEXT_SPEC = """\
# salaudit audit spec for text (salaudit init --kind text writes this file).
# The embedded text default: 64 test sentences of builtin:sentiment (AFINN's lexicon words,
# negations and filler, 16 tokens over a fixed 100-d embedding table) and the two-layer text
# CNN salaudit trains on it on first use; the gradient methods, their decoy-enhanced forms and
# the papers' three controls (constant decoys with the dictionary's mean embedding, noise, mean
# aggregation), every decoy swapping one token's whole embedding (P = 1), RelEx, top-k on grad
# and PGD on the embeddings, and every metric that applies to text. A few minutes on 2 CPU
# cores. A field left out keeps salaudit init's default.

model: builtin:sentiment-cnn
data: builtin:sentiment
selection: {mode: random, n: 64, correct_only: false}
seed: 0

methods:
{bases_and_controls}  relex: {}
decoys:                               # one token per mask: 2 x 16 optimised, 16 per control
  dance: {decoys: 32}
  constant: {decoys: 16}              # the dictionary's mean embedding in the mask
  noise: {decoys: 16}
attacks: [topk@grad, pgd]
attack_params:
  topk: {steps: 30, fraction: 0.125}  # the top 2 of 16 tokens
  pgd: {steps: 10}
radii: [2, 8, 32]                     # L_inf radii in units of 1/255 of the embedding range
metrics: null
metric_baseline: mean                 # mean: removed tokens take the mean embedding

store:
  url: runs/audit-text
shard_size: 16
""".replace("{bases_and_controls}", P1_METHODS)
SPECS = {"image": DEFAULT_SPEC, "tabular": TABULAR_SPEC, "text": TEXT_SPEC}  # init --kind


class SelectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal[MODES] = "random"  # type: ignore[valid-type]
    n: int | None = Field(16, ge=1)
    correct_only: bool = False


class StoreSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = "runs/audit"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    dtype: str = "float32"

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value == "bfloat16":
            raise ValueError(
                "bfloat16: zarr stores no bfloat16 (numpy has none); float16 halves the bytes "
                "as well (docs/architecture.md, 'Store dtype')"
            )
        if value not in STORE_DTYPES:
            raise ValueError(f"{value!r}: give one of {', '.join(STORE_DTYPES)}")
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        given = sorted(CREDENTIAL_KEYS & set(value))
        if given:
            raise ValueError(
                f"credentials ({', '.join(given)}) do not belong in a spec; set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile) in the "
                "environment instead"
            )
        return value


class CompareSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline: str | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)
    alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=1)

    @field_validator("thresholds")
    @classmethod
    def _known(cls, value: dict[str, float]) -> dict[str, float]:
        try:
            return check_thresholds(value)
        except SalauditError as e:
            raise ValueError(str(e)) from None


class AuditSpec(BaseModel):
    """What an audit computes (see DEFAULT_SPEC for every field, commented)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "builtin:digit-scenes-cnn"
    data: str = "builtin:digit-scenes"
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    seed: int = 0
    methods: dict[str, dict[str, Any]] = Field(default_factory=lambda: _copy(DEFAULT_METHODS))
    decoys: dict[str, dict[str, Any]] = Field(default_factory=lambda: _copy(DEFAULT_DECOYS))
    boundary: dict[str, Any] = Field(default_factory=dict)
    keep_decoys: bool = False
    attacks: list[str] = Field(default_factory=lambda: list(DEFAULT_ATTACKS))
    attack_params: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: _copy(DEFAULT_ATTACK_PARAMS)
    )
    radii: list[float] | None = Field(default_factory=lambda: list(DEFAULT_RADII))
    metrics: list[str] | None = None
    metric_baseline: Literal[METRIC_BASELINES] = "mean"  # type: ignore[valid-type]
    report: str | bool | None = None
    compare: CompareSpec = Field(default_factory=CompareSpec)
    store: StoreSpec = Field(default_factory=StoreSpec)
    shard_size: int = Field(8, ge=1)
    cluster: str = "auto"
    workers: int | None = Field(None, ge=1)
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    micro_batch: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    memory_budget: str | None = None
    retries: int = Field(2, ge=0)
    lease_wait: float = Field(0, ge=0)
    limit: int | None = Field(None, ge=1)

    @field_validator("methods", mode="before")
    @classmethod
    def _method_list(cls, value: Any) -> Any:
        """A plain list of names means default parameters."""
        if isinstance(value, list):
            return {str(name): {} for name in value}
        return {k: (v or {}) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("name at least one method, e.g. grad")
        for name, params in value.items():
            get_method(name, params)
        return value

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, value: list[str]) -> list[str]:
        for name in value:
            parse_attack(name.strip())
        return value

    @field_validator("memory_budget")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_bytes(value)
            except SalauditError as e:
                raise ValueError(str(e)) from None
        return value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str] | None) -> list[str] | None:
        unknown = [m for m in value or [] if m not in families() and m != "all"]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(families())} or all")
        return value

    @model_validator(mode="after")
    def _own_settings(self) -> AuditSpec:
        """A spec with its own methods starts from no decoy or boundary settings, one with its
        own attacks from no attack parameters or radii: the default audit's settings belong
        to the default audit's methods and attacks."""
        given = self.model_fields_set
        if "methods" in given:
            self.decoys = self.decoys if "decoys" in given else {}
            self.boundary = self.boundary if "boundary" in given else {}
        if "attacks" in given:
            self.attack_params = self.attack_params if "attack_params" in given else {}
            self.radii = self.radii if "radii" in given else None
        return self

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        if value not in CLUSTER_KINDS and not re.match(r"^(tcp|tls|inproc|ucx)://.+", value):
            raise ValueError(
                f"cluster {value!r} is neither {', '.join(CLUSTER_KINDS)} nor a scheduler "
                "address such as tcp://10.0.0.5:8786"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", value):
            raise ValueError(f"device {value!r}; allowed: auto, cpu, cuda or cuda:N")
        return value

    # --- derived ------------------------------------------------------------------------

    def report_url(self) -> str | None:
        """Where the audit's report goes (None: no report)."""
        if self.report is False:
            return None
        return self.report if isinstance(self.report, str) else report_location(self.store.url)

    def for_checkpoint(self, checkpoint: str | None) -> AuditSpec:
        """The spec with `{checkpoint}` (its URL) and `{checkpoint_name}` (its file name less
        the suffix) filled in wherever model, store.url, report or compare.baseline name them."""
        data = self.model_dump(mode="json")
        fields = {
            "model": (data, "model"),
            "store.url": (data["store"], "url"),
            "report": (data, "report"),
            "compare.baseline": (data["compare"], "baseline"),
        }
        named = {f: (d, k) for f, (d, k) in fields.items() if "{checkpoint" in str(d[k])}
        if checkpoint is None:
            if named:
                raise SalauditError(
                    f"spec field {next(iter(named))} names {{checkpoint}}, but no checkpoint "
                    "was given: run it from a checkpoint trigger (salaudit deploy --watch) or "
                    "with the parameter checkpoint=URL"
                )
            return self
        name = PurePosixPath(checkpoint.rstrip("/")).stem
        for d, k in named.values():
            d[k] = d[k].replace("{checkpoint_name}", name).replace("{checkpoint}", checkpoint)
        return parse_spec(data, f"the spec for checkpoint {checkpoint}")

    def with_absolute_paths(self) -> AuditSpec:
        """The spec with relative local paths (store, report, baseline) made absolute."""

        def absolute(url):
            if not isinstance(url, str) or is_remote(url) or Path(url).is_absolute():
                return url
            return str(Path(url).absolute())

        return self.model_copy(
            update={
                "store": self.store.model_copy(update={"url": absolute(self.store.url)}),
                "report": absolute(self.report),
                "compare": self.compare.model_copy(
                    update={"baseline": absolute(self.compare.baseline)}
                ),
            }
        )

    def sample_selection(self) -> Selection:
        n = self.limit or self.selection.n
        return Selection(self.selection.mode, n, self.seed, self.selection.correct_only)

    def method(self, name: str) -> Method:
        """The method `name` with this spec's parameters and its generator's decoy settings or
        the boundary search's (not yet resolved for a model)."""
        generator = decoy_generator(name)
        return get_method(
            name,
            self.methods.get(name) or None,
            self.decoys.get(generator) if generator else None,
            self.boundary if method_info(name).boundary else None,
        )

    def recorded(self) -> dict[str, Any]:
        """The spec as a store records it (no storage options: they may hold endpoints)."""
        out = self.model_dump(mode="json")
        out["store"].pop("storage_options", None)
        return out

    def storage_options(self) -> dict[str, Any] | None:
        return self.store.storage_options or None

    def check(self) -> AuditSpec:
        """Cross-field checks: decoy settings for used generators, boundary settings only with
        methods that read the boundary search, every method and attack buildable with them."""
        generators = {decoy_generator(m) for m in self.methods} - {None}
        unused = sorted(set(self.decoys) - generators)
        if unused:
            raise SalauditError(
                f"spec field decoys: settings for {', '.join(unused)}, which no method uses "
                f"(methods: {', '.join(self.methods)})"
            )
        searching = [b for b, info in registry().items() if info.boundary]
        if self.boundary and not any(method_info(m).boundary for m in self.methods):
            raise SalauditError(
                f"spec field boundary: settings apply to {', '.join(searching)}, not asked for"
            )
        for name in self.methods:
            try:
                self.method(name)
            except SalauditError as e:
                raise SalauditError(f"spec field methods.{name} (with its settings): {e}") from None
        for name in self.attacks:
            try:
                attack_params(name, self.attack_params.get(parse_attack(name)[0]))
            except SalauditError as e:
                raise SalauditError(f"spec field attack_params ({name}): {e}") from None
        return self


def parse_spec(data: dict[str, Any] | None, where: str = "spec") -> AuditSpec:
    """Validate a spec's fields; errors name the field and what it allows."""
    try:
        spec = AuditSpec.model_validate(data or {})
    except ValidationError as e:
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {_message(err)}"
            for err in e.errors()
        ]
        if len(lines) == 1:  # one line: where, the field, what it allows
            raise SalauditError(f"{where}: {lines[0]}") from None
        listed = "\n".join(f"  {line}" for line in lines)
        raise SalauditError(f"{where} has {len(lines)} invalid fields:\n{listed}") from None
    return spec.check()


def _copy(value: dict) -> dict:
    return {k: dict(v) for k, v in value.items()}


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown field; valid fields: {', '.join(AuditSpec.model_fields)}"
    return err["msg"].removeprefix("Value error, ")


def load_spec(path: str | Path | None) -> AuditSpec:
    """The spec in the YAML file at `path`, or the embedded default."""
    if path is None:
        return parse_spec(yaml.safe_load(DEFAULT_SPEC), "the default spec")
    path = Path(path)
    if not path.is_file():
        raise SalauditError(f"no spec file at {path}; write one with salaudit init {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SalauditError(f"{path} is not valid YAML: {e}") from None
    if not data:
        raise SalauditError(
            f"spec file {path} is empty; write the fields to change (salaudit init {path} writes "
            "them all), or run without a spec for the default audit"
        )
    if not isinstance(data, dict):
        raise SalauditError(f"{path} must hold a mapping of spec fields, not {type(data).__name__}")
    return parse_spec(data, str(path))
