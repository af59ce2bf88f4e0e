"""TokenFlow settings: safe local defaults, production through environment variables.

Every variable read here is documented in README.md ("Configuration").
"""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------
BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("TOKENFLOW_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------
def _local_secret_key() -> str:
    """A per-checkout key kept under var/ (never committed) when SECRET_KEY is unset."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = os.environ.get("SECRET_KEY") or _local_secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "accounts",
    "routing",
    "compression",
    "pipelines",
    "batches",
    "openai_batches",
    "response_cache",
    "web",
    "rollups",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tokenflow_site.errors.JsonErrorMiddleware",
    "accounts.middleware.ApiKeyMiddleware",
]

ROOT_URLCONF = "tokenflow_site.urls"
WSGI_APPLICATION = "tokenflow_site.wsgi.application"
ASGI_APPLICATION = "tokenflow_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("TOKENFLOW_MAX_UPLOAD_BYTES", 50 * 1024 * 1024))


# ---------------------------------------------------------------------------
# Database: SQLite (WAL) by default, DATABASE_URL for PostgreSQL
# ---------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
# SQLite, however it is named: WAL, IMMEDIATE write transactions and a busy timeout, so that
# daphne, batch workers and tests sharing the file wait for each other instead of failing.
SQLITE_OPTIONS = {
    "timeout": 30,
    "transaction_mode": "IMMEDIATE",
    "init_command": (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;"
    ),
}
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
        DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ.get(
            "TOKENFLOW_TEST_DB_NAME", "test_tokenflow"
        )
    elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        DATABASES["default"].setdefault("OPTIONS", {}).update(SQLITE_OPTIONS)
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "tokenflow.sqlite3",
            "OPTIONS": SQLITE_OPTIONS,
            # Keep each thread's connection (the default 0 reconnects and re-runs the
            # PRAGMAs on every request: ~1.5 ms of a streamed request's time to first token).
            "CONN_MAX_AGE": 600,
            # A file (not :memory:) so live-server threads and worker processes share it.
            "TEST": {
                "NAME": str(
                    VAR_DIR / os.environ.get("TOKENFLOW_TEST_DB_NAME", "test_tokenflow.sqlite3")
                )
            },
        }
    }


# ---------------------------------------------------------------------------
# Channels and cache: in-memory by default, Redis with REDIS_URL
# ---------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
# Seconds to connect to / hear from Redis: a stalled Redis makes cache calls fail (rate
# limits fail open) instead of hanging requests. See docs/faults.md.
TOKENFLOW_REDIS_TIMEOUT = float(os.environ.get("TOKENFLOW_REDIS_TIMEOUT", 1))
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # Connect timeout only: the layer's receive blocks on Redis by design (BZPOPMIN).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_connect_timeout": TOKENFLOW_REDIS_TIMEOUT}]
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.environ.get("TOKENFLOW_CACHE_PREFIX", "tokenflow"),
            "OPTIONS": {
                "socket_connect_timeout": TOKENFLOW_REDIS_TIMEOUT,
                "socket_timeout": TOKENFLOW_REDIS_TIMEOUT,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


# ---------------------------------------------------------------------------
# Security (HTTPS=1 behind a TLS-terminating proxy)
# ---------------------------------------------------------------------------
HTTPS = env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = 31536000 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]


# ---------------------------------------------------------------------------
# REST framework and OpenAPI
# ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    # accounts.middleware.ApiKeyMiddleware authenticates and authorizes /api/ and /v1/
    # (accounts.permissions); DRF reads the Principal it admitted.
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.PrincipalAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.IsApiPrincipal"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # A JSON body is JSON whatever its Content-Type says (curl -d sends a form type).
    "DEFAULT_PARSER_CLASSES": ["tokenflow_site.api.AnyContentJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "tokenflow_site.schema.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "tokenflow_site.api.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "tokenflow_site.errors.drf_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "TokenFlow API",
    "DESCRIPTION": "LLM gateway: compression, classification, routing, streaming, batches.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc from the installed drf-spectacular-sidecar: no CDN, works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tokenflow_site.schema.add_error_responses",
    ],
    "SECURITY": [{"ApiKeyAuth": []}],
    # Several models have a `status`: stable component names instead of hashed ones.
    "ENUM_NAME_OVERRIDES": {
        "GenerationStatusEnum": "routing.models.Generation.Status",
        "PipelineRunStatusEnum": "pipelines.models.PipelineRun.Status",
        "RunAgentStatusEnum": "pipelines.models.RunAgent.Status",
        "BatchJobStatusEnum": "batches.models.BatchJob.Status",
    },
}


# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "httpx2": {"level": "WARNING"}},
}


# ---------------------------------------------------------------------------
# TokenFlow: models and assets
# ---------------------------------------------------------------------------
TOKENFLOW_MODEL_DIR = Path(os.environ.get("TOKENFLOW_MODEL_DIR", VAR_DIR / "models"))
TOKENFLOW_LOCAL_MODEL = os.environ.get("TOKENFLOW_LOCAL_MODEL", "")  # "" = converted SmolLM2
TOKENFLOW_TOKENIZER_ENCODING = os.environ.get("TOKENFLOW_TOKENIZER_ENCODING", "cl100k_base")
TOKENFLOW_MAX_INPUT_CHARS = int(os.environ.get("TOKENFLOW_MAX_INPUT_CHARS", 200_000))
# How long a generation's final write waits for an unreachable database (tokenflow_site.db).
TOKENFLOW_DB_RETRY_SECONDS = float(os.environ.get("TOKENFLOW_DB_RETRY_SECONDS", 30))
# Generations still queued/streaming after this long belong to a dead process (swept).
TOKENFLOW_STALE_GENERATION_SECONDS = float(
    os.environ.get("TOKENFLOW_STALE_GENERATION_SECONDS", 3600)
)

# ---------------------------------------------------------------------------
# TokenFlow: providers (keys are read when a provider is used, not here)
# ---------------------------------------------------------------------------
TOKENFLOW_PROVIDERS = {
    "mock": "routing.providers.mock.MockProvider",
    "local": "routing.providers.local_hf.LocalHFProvider",
    "openai": "routing.providers.openai_compat.OpenAICompatProvider",
    "groq": "routing.providers.openai_compat.OpenAICompatProvider",
    "openrouter": "routing.providers.openai_compat.OpenAICompatProvider",
    "custom": "routing.providers.openai_compat.OpenAICompatProvider",
    "local-embedding": "routing.providers.local_embedding.LocalEmbeddingProvider",
}
TOKENFLOW_PROVIDER_ENDPOINTS = {
    "openai": {
        "base_url_env": "OPENAI_BASE_URL",
        "base_url": "https://api.openai.com/v1",
        "key_env": "OPENAI_API_KEY",
    },
    "groq": {"base_url": "https://api.groq.com/openai/v1", "key_env": "GROQ_API_KEY"},
    "openrouter": {"base_url": "https://openrouter.ai/api/v1", "key_env": "OPENROUTER_API_KEY"},
}
TOKENFLOW_JSONL_LOG = os.environ.get("TOKENFLOW_JSONL_LOG", "")
TOKENFLOW_MAX_OUTPUT_TOKENS = int(os.environ.get("TOKENFLOW_MAX_OUTPUT_TOKENS", 32768))
TOKENFLOW_RETRY_ATTEMPTS = int(os.environ.get("TOKENFLOW_RETRY_ATTEMPTS", 3))
TOKENFLOW_RETRY_BACKOFF = float(os.environ.get("TOKENFLOW_RETRY_BACKOFF", 0.5))
TOKENFLOW_RETRY_MAX_DELAY = float(os.environ.get("TOKENFLOW_RETRY_MAX_DELAY", 20))
# Streaming generations write their partial text and a heartbeat this often.
TOKENFLOW_CHECKPOINT_SECONDS = float(os.environ.get("TOKENFLOW_CHECKPOINT_SECONDS", 2))
# A streaming generation whose heartbeat is older than this belongs to a dead process.
TOKENFLOW_STALE_STREAM_SECONDS = float(os.environ.get("TOKENFLOW_STALE_STREAM_SECONDS", 120))
# Background processes `manage.py runserver_all` (make serve) starts next to daphne; the
# sweeper closes generations a killed process left open.
TOKENFLOW_SIDECARS: list[list[str]] = [
    ["sweep_generations", "--every", os.environ.get("TOKENFLOW_SWEEP_SECONDS", "30")]
]

# ---------------------------------------------------------------------------
# TokenFlow: compression
# ---------------------------------------------------------------------------
# Engine: a name from TOKENFLOW_COMPRESSOR_ENGINES or a dotted path to a CompressorBackend.
TOKENFLOW_COMPRESSOR_ENGINES = {
    "fast": "compression.engines.FastCompressor",
    "stock": "compression.engines.StockCompressor",
}
TOKENFLOW_COMPRESSOR = os.environ.get("TOKENFLOW_COMPRESSOR", "fast")
# Methods other than "llmlingua" have a backend of their own (whatever the engine).
TOKENFLOW_COMPRESSOR_METHOD_BACKENDS = {"llmlingua2": "compression.engines.LLMLingua2Compressor"}
# Any HF causal LM path or hub id ("" = the offline SmolLM2 directory); for llmlingua2 a
# token-classification checkpoint (default microsoft/llmlingua-2-xlm-roberta-large-meetingbank).
TOKENFLOW_COMPRESSOR_MODEL = os.environ.get("TOKENFLOW_COMPRESSOR_MODEL", "")
TOKENFLOW_COMPRESSOR_METHOD = os.environ.get("TOKENFLOW_COMPRESSOR_METHOD", "llmlingua")
TOKENFLOW_COMPRESSOR_ALLOW_DOWNLOAD = env_bool("TOKENFLOW_COMPRESSOR_ALLOW_DOWNLOAD", False)
TOKENFLOW_COMPRESSOR_OPTIONS = {
    "quantize": os.environ.get("TOKENFLOW_COMPRESSOR_QUANTIZE", "int8"),  # int8 | none
    "threads": int(os.environ.get("TOKENFLOW_COMPRESSOR_THREADS", 0)),  # 0 = torch default
    # Score bonus (nats) for words with digits or capitals: IDs, numbers, names survive.
    "entity_bonus": float(os.environ.get("TOKENFLOW_COMPRESSOR_ENTITY_BONUS", 3.0)),
    # Question-aware ranking: weight of BM25 next to conditional perplexity; sentences kept whole.
    "lexical_weight": float(os.environ.get("TOKENFLOW_COMPRESSOR_LEXICAL_WEIGHT", 1.0)),
    "question_top_k": int(os.environ.get("TOKENFLOW_COMPRESSOR_QUESTION_TOP_K", 2)),
}
# Prompts under this many tokens are returned unchanged (skipped: true).
TOKENFLOW_COMPRESSOR_MIN_TOKENS = int(os.environ.get("TOKENFLOW_COMPRESSOR_MIN_TOKENS", 64))
TOKENFLOW_COMPRESSOR_MAX_CHARS = int(os.environ.get("TOKENFLOW_COMPRESSOR_MAX_CHARS", 100_000))
TOKENFLOW_COMPRESSOR_TOKEN_ENCODING = os.environ.get(
    "TOKENFLOW_COMPRESSOR_TOKEN_ENCODING", TOKENFLOW_TOKENIZER_ENCODING
)

# ---------------------------------------------------------------------------
# TokenFlow: streaming transports and providers
# ---------------------------------------------------------------------------
# Upstream (openai_compat) timeouts in seconds; the SDK's own retries are off (we retry).
TOKENFLOW_UPSTREAM_CONNECT_TIMEOUT = float(os.environ.get("TOKENFLOW_UPSTREAM_CONNECT_TIMEOUT", 10))
TOKENFLOW_UPSTREAM_READ_TIMEOUT = float(os.environ.get("TOKENFLOW_UPSTREAM_READ_TIMEOUT", 60))
# Local model: requests allowed to wait behind the running one(s); beyond that 503.
TOKENFLOW_LOCAL_QUEUE_SIZE = int(os.environ.get("TOKENFLOW_LOCAL_QUEUE_SIZE", 8))
# Sequences generating at once; greedy ones share one batched forward pass.
TOKENFLOW_LOCAL_CONCURRENCY = int(os.environ.get("TOKENFLOW_LOCAL_CONCURRENCY", 4))
TOKENFLOW_LOCAL_BATCH_WINDOW = float(os.environ.get("TOKENFLOW_LOCAL_BATCH_WINDOW", 0.01))
TOKENFLOW_LOCAL_DEFAULT_MAX_TOKENS = int(os.environ.get("TOKENFLOW_LOCAL_DEFAULT_MAX_TOKENS", 256))
# HTTP requests share this many sync threads (ORM, signals) instead of one new thread and DB
# connection per request (tokenflow_site.middleware.SharedSyncThreads), like WebSocket
# consumers share one; 0 = Django's default (a thread per request).
TOKENFLOW_HTTP_SYNC_THREADS = int(os.environ.get("TOKENFLOW_HTTP_SYNC_THREADS", 1))
# Retry-After (seconds) sent with a 503 queue_full.
TOKENFLOW_LOCAL_RETRY_AFTER = float(os.environ.get("TOKENFLOW_LOCAL_RETRY_AFTER", 5))
# Torch intra-op threads for local generation: "auto" = half the cores (at least 1), 0 = torch's
# default (all cores). All cores lose several-fold as soon as anything else wants a core (OpenMP
# threads wait on a descheduled one): see docs/streaming.md.
_local_threads = os.environ.get("TOKENFLOW_LOCAL_THREADS", "auto").strip().lower()
TOKENFLOW_LOCAL_THREADS = (
    max(1, (os.cpu_count() or 2) // 2) if _local_threads == "auto" else int(_local_threads)
)
# GET /metrics: public (default, like most exporters) or staff/API-key only.
TOKENFLOW_METRICS_PUBLIC = env_bool("TOKENFLOW_METRICS_PUBLIC", True)

# ---------------------------------------------------------------------------
# TokenFlow: classification and routing
# ---------------------------------------------------------------------------
# "embedding" (MiniLM similarity, offline default), "nli" (transformers zero-shot pipeline)
# or a dotted path to a routing.classifiers.base.Classifier subclass.
TOKENFLOW_CLASSIFIER = os.environ.get("TOKENFLOW_CLASSIFIER", "embedding")
# Model path or hub id; "" = all-MiniLM-L6-v2 (embedding) / facebook/bart-large-mnli (nli).
TOKENFLOW_CLASSIFIER_MODEL = os.environ.get("TOKENFLOW_CLASSIFIER_MODEL", "")
# Softmax temperature over cosine similarities (single-label) and sigmoid scale (multi-label).
TOKENFLOW_CLASSIFIER_TEMPERATURE = float(os.environ.get("TOKENFLOW_CLASSIFIER_TEMPERATURE", 0.03))
# Cosine similarity that maps to a 0.5 multi-label score.
TOKENFLOW_CLASSIFIER_THRESHOLD = float(os.environ.get("TOKENFLOW_CLASSIFIER_THRESHOLD", 0.2))
# Torch intra-op threads for the classifier (0 = leave torch's default).
TOKENFLOW_CLASSIFIER_THREADS = int(os.environ.get("TOKENFLOW_CLASSIFIER_THREADS", 0))
# Concurrent classifications share one forward pass, up to this many prompts (1 = off).
TOKENFLOW_CLASSIFIER_MAX_BATCH = int(os.environ.get("TOKENFLOW_CLASSIFIER_MAX_BATCH", 16))
TOKENFLOW_MAX_CATEGORIES = int(os.environ.get("TOKENFLOW_MAX_CATEGORIES", 20))
# Example utterances one request may give per category (possible_categories[].examples).
TOKENFLOW_MAX_EXAMPLES = int(os.environ.get("TOKENFLOW_MAX_EXAMPLES", 10))
# Newest routing-table examples per category the classifier compares a prompt with.
TOKENFLOW_MAX_TABLE_EXAMPLES = int(os.environ.get("TOKENFLOW_MAX_TABLE_EXAMPLES", 200))
# Used when a category has no route, and as the last fallback of every route.
TOKENFLOW_DEFAULT_MODEL = os.environ.get("TOKENFLOW_DEFAULT_MODEL", "local/smollm2-135m-instruct")


# ---------------------------------------------------------------------------
# TokenFlow: response cache (response_cache/, docs/cache.md)
# ---------------------------------------------------------------------------
# Master switch. Requests are cached by default only at temperature 0 (or `cache: true`).
TOKENFLOW_CACHE = env_bool("TOKENFLOW_CACHE", True)
# Seconds a stored answer is served.
TOKENFLOW_CACHE_TTL = max(1, int(os.environ.get("TOKENFLOW_CACHE_TTL", 86_400)))
# Semantic hits: embedding similarity of the last user message (same model, parameters and
# earlier messages); per-model override ModelRanking.cache_similarity_threshold.
TOKENFLOW_CACHE_SEMANTIC = env_bool("TOKENFLOW_CACHE_SEMANTIC", True)
# minilm: all-MiniLM-L6-v2 (precise, a forward pass); static: the model distilled from it by
# `prepare_models` (a lookup, ~25 us, less precise). response_cache/embedders.py.
TOKENFLOW_CACHE_EMBEDDER = os.environ.get("TOKENFLOW_CACHE_EMBEDDER", "minilm-int8")
if TOKENFLOW_CACHE_EMBEDDER not in ("minilm", "minilm-int8", "static"):
    raise ImproperlyConfigured(
        "TOKENFLOW_CACHE_EMBEDDER must be 'minilm', 'minilm-int8' or 'static'."
    )
# Unset: the embedder's own default (minilm 0.89, static 0.965; chosen on the tune split).
TOKENFLOW_CACHE_SIMILARITY = (
    float(os.environ["TOKENFLOW_CACHE_SIMILARITY"])
    if os.environ.get("TOKENFLOW_CACHE_SIMILARITY")
    else None
)
# MiniLM by ONNX Runtime when `prepare_models` exported it (~3 ms a lookup, inline), else
# by torch (~8-11 ms, in a worker thread). Same vectors either way.
TOKENFLOW_CACHE_ONNX = env_bool("TOKENFLOW_CACHE_ONNX", True)
# MiniLM path: the static similarity a stored entry needs before a lookup pays a MiniLM
# pass for it (0 = no prefilter); chosen on the tune split (bench/cache.py).
TOKENFLOW_CACHE_PREFILTER = float(os.environ.get("TOKENFLOW_CACHE_PREFILTER", 0.55))
# Semantic hits also need the same numbers, capitalised names and negation.
TOKENFLOW_CACHE_GUARD = env_bool("TOKENFLOW_CACHE_GUARD", True)


# ---------------------------------------------------------------------------
# TokenFlow: fan-out pipelines and rate limits
# ---------------------------------------------------------------------------
TOKENFLOW_DEFAULT_PIPELINE = os.environ.get("TOKENFLOW_DEFAULT_PIPELINE", "default")
TOKENFLOW_PROCESS_MAX_MESSAGE_CHARS = int(
    os.environ.get("TOKENFLOW_PROCESS_MAX_MESSAGE_CHARS", 20_000)
)
# A run still "running" this long after its pipeline deadline is considered abandoned
# (its process died) and the same message_id may run again.
TOKENFLOW_PROCESS_STALE_GRACE = float(os.environ.get("TOKENFLOW_PROCESS_STALE_GRACE", 60))
# The sweeper re-adapts the router to recent traffic this often (routing.services.adaptation,
# `adapt_router`); 0 = only when staff run it.
TOKENFLOW_ROUTER_ADAPT_SECONDS = float(os.environ.get("TOKENFLOW_ROUTER_ADAPT_SECONDS", 86400))
# How often a process re-reads the API keys it admits on the event loop (accounts.selectors);
# 0 = never (a key is then looked up in a thread once its 1 s cache entry expires).
TOKENFLOW_KEY_REFRESH_SECONDS = float(os.environ.get("TOKENFLOW_KEY_REFRESH_SECONDS", 0.5))
# Per-key defaults (ApiKey.requests_per_minute / tokens_per_minute override); 0 = unlimited.
TOKENFLOW_RATE_LIMIT_RPM = int(os.environ.get("TOKENFLOW_RATE_LIMIT_RPM", 0))
TOKENFLOW_RATE_LIMIT_TPM = int(os.environ.get("TOKENFLOW_RATE_LIMIT_TPM", 0))
# Streams (generations) one key may have open at once (0 = unlimited); a slot a killed
# process never released expires after TOKENFLOW_STREAM_SLOT_SECONDS.
TOKENFLOW_MAX_STREAMS_PER_KEY = int(os.environ.get("TOKENFLOW_MAX_STREAMS_PER_KEY", 64))
TOKENFLOW_STREAM_SLOT_SECONDS = float(os.environ.get("TOKENFLOW_STREAM_SLOT_SECONDS", 900))
# Completion tokens reserved against a key's tpm when a request sets no max_tokens.
TOKENFLOW_RATE_LIMIT_RESERVE_TOKENS = int(
    os.environ.get("TOKENFLOW_RATE_LIMIT_RESERVE_TOKENS", 256)
)
# Budgets (routing.services.spend): a key's total-period spend counter in the cache is
# re-read from the database this often (day/month counters live until their period ends).
TOKENFLOW_BUDGET_SYNC_SECONDS = float(os.environ.get("TOKENFLOW_BUDGET_SYNC_SECONDS", 3600))

# ---------------------------------------------------------------------------
# TokenFlow: batch jobs
# ---------------------------------------------------------------------------
TOKENFLOW_BATCH_MAX_ITEMS = int(os.environ.get("TOKENFLOW_BATCH_MAX_ITEMS", 50_000))
TOKENFLOW_BATCH_MAX_CONCURRENCY = int(os.environ.get("TOKENFLOW_BATCH_MAX_CONCURRENCY", 1000))
TOKENFLOW_BATCH_DEFAULT_CONCURRENCY = int(os.environ.get("TOKENFLOW_BATCH_CONCURRENCY", 16))
TOKENFLOW_BATCH_MAX_ATTEMPTS = int(os.environ.get("TOKENFLOW_BATCH_MAX_ATTEMPTS", 3))
TOKENFLOW_BATCH_BACKOFF_BASE = float(os.environ.get("TOKENFLOW_BATCH_BACKOFF_BASE", 1.0))
TOKENFLOW_BATCH_BACKOFF_MAX = float(os.environ.get("TOKENFLOW_BATCH_BACKOFF_MAX", 60))
TOKENFLOW_BATCH_TIMEOUT = float(os.environ.get("TOKENFLOW_BATCH_TIMEOUT", 600))
# Upper bounds on a job's retry_policy (400 beyond): backoff_base, backoff_max and an honoured
# Retry-After never exceed MAX_BACKOFF seconds; timeout never exceeds MAX_TIMEOUT seconds.
TOKENFLOW_BATCH_MAX_BACKOFF = float(os.environ.get("TOKENFLOW_BATCH_MAX_BACKOFF", 3600))
TOKENFLOW_BATCH_MAX_TIMEOUT = float(os.environ.get("TOKENFLOW_BATCH_MAX_TIMEOUT", 3600))
# prompt_template length (plain {name} fields only); rendered prompts obey MAX_INPUT_CHARS.
TOKENFLOW_BATCH_MAX_TEMPLATE_CHARS = int(
    os.environ.get("TOKENFLOW_BATCH_MAX_TEMPLATE_CHARS", 20_000)
)
# Per-key quotas (an ApiKey's own values override them; 0 = unlimited): unfinished jobs, and
# items leased at once across all of the key's jobs and workers.
TOKENFLOW_BATCH_MAX_ACTIVE_JOBS_PER_KEY = int(
    os.environ.get("TOKENFLOW_BATCH_MAX_ACTIVE_JOBS_PER_KEY", 10)
)
TOKENFLOW_BATCH_MAX_CONCURRENCY_PER_KEY = int(
    os.environ.get("TOKENFLOW_BATCH_MAX_CONCURRENCY_PER_KEY", 1000)
)
# A killed worker's items are re-claimed once their lease expires; live workers renew theirs.
TOKENFLOW_BATCH_LEASE_SECONDS = float(os.environ.get("TOKENFLOW_BATCH_LEASE_SECONDS", 60))
TOKENFLOW_BATCH_POLL_SECONDS = float(os.environ.get("TOKENFLOW_BATCH_POLL_SECONDS", 0.5))
TOKENFLOW_BATCH_PROGRESS_SECONDS = float(os.environ.get("TOKENFLOW_BATCH_PROGRESS_SECONDS", 0.5))
# Resolves model "auto" for an item's messages: (messages) -> ModelRanking.
TOKENFLOW_BATCH_AUTO_SELECT = os.environ.get(
    "TOKENFLOW_BATCH_AUTO_SELECT", "routing.services.selection.model_for_messages"
)
# The only policy hooks and request functions (executors) a job may name, by dotted path: for
# API keys, staff, the admin and the Python client alike (checked at creation and at run time).
TOKENFLOW_BATCH_HANDLERS = env_list("TOKENFLOW_BATCH_HANDLERS", "")
TOKENFLOW_BATCH_WS_POLL_SECONDS = float(os.environ.get("TOKENFLOW_BATCH_WS_POLL_SECONDS", 2))
# Fault-injection point for tests/faults/test_batches.py (0 = off, never set it in production):
# the worker sleeps this long inside each result-flush transaction, after its item UPDATE.
TOKENFLOW_FAULT_FLUSH_SLEEP = float(os.environ.get("TOKENFLOW_FAULT_FLUSH_SLEEP", 0))
if env_bool("TOKENFLOW_BATCH_WORKER", True):
    TOKENFLOW_SIDECARS.append(["batch_worker"])

# ---------------------------------------------------------------------------
# TokenFlow: the front door (pagination, WebSocket auth)
# ---------------------------------------------------------------------------
TOKENFLOW_MAX_PAGE_SIZE = int(os.environ.get("TOKENFLOW_MAX_PAGE_SIZE", 500))
# Seconds an unauthenticated WebSocket may stay open waiting for its {"type": "auth"}.
TOKENFLOW_WS_AUTH_GRACE = float(os.environ.get("TOKENFLOW_WS_AUTH_GRACE", 10))
# Largest WebSocket message a consumer parses (bytes, UTF-8); bigger ones get an error
# `message_too_large`. 2 MiB holds a TOKENFLOW_MAX_INPUT_CHARS prompt even \u-escaped.
TOKENFLOW_WS_MAX_MESSAGE_BYTES = int(
    os.environ.get("TOKENFLOW_WS_MAX_MESSAGE_BYTES", 2 * 1024 * 1024)
)
# Most messages one generation request may carry.
TOKENFLOW_MAX_MESSAGES = int(os.environ.get("TOKENFLOW_MAX_MESSAGES", 500))
# Which environment variables a model row may name as its key (fnmatch patterns); server
# secrets (SECRET_KEY, DATABASE_*, REDIS_*, ...) are refused whatever these say.
TOKENFLOW_API_KEY_ENV_PATTERNS = [
    p.strip() for p in os.environ.get("TOKENFLOW_API_KEY_ENV_PATTERNS", "*_API_KEY").split(",")
]
# Let model base URLs point at private / loopback / link-local hosts (local vLLM, Ollama).
TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS = env_bool("TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS", False)

# ---------------------------------------------------------------------------
# TokenFlow: the OpenAI surface (/v1: images, embeddings, files)
# ---------------------------------------------------------------------------
# Image parts per chat request, and the size of one image URL (a data: URL holds the image).
TOKENFLOW_MAX_IMAGES = int(os.environ.get("TOKENFLOW_MAX_IMAGES", 16))
# Choices (`n`) per /v1 completion request: each is its own generation (400 beyond).
TOKENFLOW_MAX_CHOICES = int(os.environ.get("TOKENFLOW_MAX_CHOICES", 8))
TOKENFLOW_MAX_IMAGE_URL_CHARS = int(os.environ.get("TOKENFLOW_MAX_IMAGE_URL_CHARS", 10_000_000))
# /v1/embeddings: inputs per request, the default model, and whether vectors are stored.
TOKENFLOW_MAX_EMBEDDING_INPUTS = int(os.environ.get("TOKENFLOW_MAX_EMBEDDING_INPUTS", 2048))
TOKENFLOW_EMBEDDING_MODEL = os.environ.get("TOKENFLOW_EMBEDDING_MODEL", "local/minilm")
TOKENFLOW_EMBEDDINGS_STORE_VECTORS = env_bool("TOKENFLOW_EMBEDDINGS_STORE_VECTORS", False)
# /v1/files: where uploaded and produced files live, and the largest upload accepted.
TOKENFLOW_FILES_DIR = Path(os.environ.get("TOKENFLOW_FILES_DIR", VAR_DIR / "files"))
TOKENFLOW_MAX_UPLOAD_BYTES = DATA_UPLOAD_MAX_MEMORY_SIZE

# ---------------------------------------------------------------------------
# TokenFlow: staff pages (web/)
# ---------------------------------------------------------------------------
# ws/dashboard/: how often the consumer reads in-flight generations and active batch jobs
# (pushed when they changed), and the shortest interval between two pushes of the charts.
TOKENFLOW_DASHBOARD_LIVE_SECONDS = float(os.environ.get("TOKENFLOW_DASHBOARD_LIVE_SECONDS", 1))
TOKENFLOW_DASHBOARD_STATS_SECONDS = float(os.environ.get("TOKENFLOW_DASHBOARD_STATS_SECONDS", 5))
