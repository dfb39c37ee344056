"""Turn a suite into the list of jobs: one pretraining per (method, corpus, pretraining seed) and one evaluation
per (pretraining, task, protocol, label fraction, seed). Each job's key is a hash of exactly what determines its
result, so finished work is recognised and never redone, and a changed setting never reuses stale work.

An encoder the user brings (the suite's ``encoders``, ``--encoder NAME=PATH``: medssl/evaluate/external.py) is a row like a
method, with one "pretraining" per corpus that trains nothing and has no seed (``PretrainJob.external``): its weights
are fixed, its evaluations are keyed by the file's SHA-256, and the tables pair it with every pretraining run of the
other rows (medssl/report/compare.py)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from datasets import DatasetError, dataset_version
from medssl.evaluate.external import check_encoder_name, identity, resolve_spec
from medssl.nn.backbone import TRUNK_VERSION
from medssl.suite.config import fraction_label
from medssl.suite.protocol import PROTOCOL_VERSION, ConfigError, stable_hash
from methods import UnknownMethodError, method_class, method_names, resolve_config

PRETRAIN_PROTOCOL_KEYS = ("backbone", "image_size", "epochs", "batch_size", "optimizer", "schedule", "augment")
# what an encoder without training depends on: its architecture and the views of the BatchNorm statistics pass
UNTRAINED_PROTOCOL_KEYS = ("backbone", "image_size", "batch_size", "augment")
# the pretraining-seed slot of an external encoder's runs in the tables (it has no pretraining seed)
FIXED_RUN = -1


@dataclasses.dataclass
class PretrainJob:
    method: str
    corpus: str
    seed: int
    config: Dict[str, Any]
    hash: str
    monitor: Optional[Dict[str, Any]] = None  # learning-signal probe settings; not hashed (medssl/pretrain/monitor.py)
    external: Optional[Dict[str, Any]] = None  # an encoder the user brings: its resolved ``encoders`` entry

    @property
    def key(self) -> str:
        return f"{self.method}-{self.corpus}-{self.hash}"

    @property
    def trains(self) -> bool:
        return self.external is None and method_class(self.method).needs_pretraining


@dataclasses.dataclass
class EvalJob:
    pretrain: PretrainJob
    task: Dict[str, Any]
    protocol: str
    fraction: float
    seed: int
    config: Dict[str, Any]
    key: str

    def describe(self) -> str:
        return f"{self.pretrain.method} {self.task['name']} {self.protocol} {fraction_label(self.fraction)} seed={self.seed}"

    @property
    def record_keys(self) -> List[str]:
        """The keys of the records this job stores: its own (a CT job stores one per head, medssl/run/ct.py)."""
        return [self.key]

    @property
    def run(self) -> tuple:
        """(pretraining seed, evaluation seed): the run's place in a table cell; FIXED_RUN for an external encoder."""
        return (FIXED_RUN if self.pretrain.seed is None else self.pretrain.seed, self.seed)


@dataclasses.dataclass
class Plan:
    suite: Dict[str, Any]
    pretrain_jobs: List[PretrainJob]
    eval_jobs: List[EvalJob]
    unrecorded: List[str] = dataclasses.field(
        default_factory=list
    )  # suite methods left out of a report: no records yet


def corpora(suite: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Named pretraining corpora (e.g. chest X-rays and fundus images); each task names the one it uses."""
    return suite["pretrain"]["datasets"]


def task_type(task: Dict[str, Any]) -> str:
    return task.get("type", "classification")


def evaluation_settings(suite: Dict[str, Any], protocol: str, task: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The evaluation settings a job uses: ``evaluation.<protocol>`` for classification, ``evaluation.segmentation``
    for both protocols of a segmentation task (the protocol then only says whether the encoder is frozen)."""
    evaluation = suite["evaluation"]
    return (
        evaluation["segmentation"] if task is not None and task_type(task) == "segmentation" else evaluation[protocol]
    )


def evaluation_seeds(suite: Dict[str, Any], protocol: str, task: Optional[Dict[str, Any]] = None) -> List[int]:
    """Seeds of one protocol (of one task): its settings' own ``seeds`` entry if any (e.g. fewer for costly
    fine-tuning), else the evaluation seeds."""
    evaluation = suite["evaluation"]
    settings = evaluation_settings(suite, protocol, task)
    return [int(s) for s in settings.get("seeds", evaluation[protocol].get("seeds", evaluation["seeds"]))]


def with_version(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A dataset spec plus its loader's version, for hashing (unknown datasets fail later, at load time)."""
    try:
        return {**spec, "loader_version": dataset_version(spec["name"])}
    except DatasetError:
        return dict(spec)


def with_encoders(suite: Dict[str, Any], encoders: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The suite with external encoders added to its ``encoders`` (``--encoder``); a name used twice is refused."""
    if not encoders:
        return suite
    have = dict(suite.get("encoders") or {})
    for name, spec in encoders.items():
        if name in have:
            raise ConfigError(f"encoder name {name!r} is given twice; give each row its own name")
        have[name] = spec
    return {**suite, "encoders": have}


def rows_and_encoders(suite: Dict[str, Any]) -> tuple:
    """(table rows: the suite's methods, then its external encoders not listed among them; resolved ``encoders``)."""
    encoders = {}
    for name, spec in (suite.get("encoders") or {}).items():
        check_encoder_name(name, method_names())
        encoders[name] = resolve_spec(name, spec)
    return list(suite["methods"]) + [name for name in encoders if name not in suite["methods"]], encoders


def method_settings(method: str, params: Optional[Dict[str, Any]]) -> tuple:
    """(the method's class, its full settings as a dict); an unknown method or setting is a ConfigError."""
    try:
        return method_class(method), dataclasses.asdict(resolve_config(method, params))
    except UnknownMethodError as err:
        raise ConfigError(str(err)) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def external_job(name: str, spec: Dict[str, Any], corpus_name: str, corpus: Dict[str, Any]) -> PretrainJob:
    config = {"encoder": name, "external": identity(spec), "version": PROTOCOL_VERSION}
    return PretrainJob(name, corpus_name, None, {**config, "corpus": corpus}, stable_hash(config), external=spec)


def build_plan(suite: Dict[str, Any]) -> Plan:
    """Every pretraining and evaluation job of an image suite, each keyed by the hash of what determines it."""
    rows, encoders = rows_and_encoders(suite)
    suite = {**suite, "methods": rows, **({"encoders": encoders} if encoders else {})}
    method_params = suite.get("method_params", {}) or {}
    unknown_params = sorted(set(method_params) - set(method_names()))
    if unknown_params:
        raise ConfigError(
            f"method_params given for unknown methods {unknown_params}; known methods: {', '.join(method_names())}"
        )
    jobs: Dict[tuple, PretrainJob] = {}
    for method in suite["methods"]:
        if method in encoders:
            for corpus_name, corpus in corpora(suite).items():
                jobs[(method, corpus_name, None)] = external_job(
                    method, encoders[method], corpus_name, with_version(corpus)
                )
            continue
        cls, params = method_settings(method, method_params.get(method))
        if cls.track != "2d":
            raise ConfigError(
                f"{method} trains on CT volumes and this suite on 2D images; list it in a CT suite (track: ct), e.g. --suite vox2vec3d"
            )
        for corpus_name, corpus in corpora(suite).items():
            for seed in suite["pretrain"]["seeds"]:
                config = pretraining_config(method, cls, params, corpus, suite["pretrain"], int(seed))
                jobs[(method, corpus_name, int(seed))] = PretrainJob(
                    method, corpus_name, int(seed), config, stable_hash(config), suite["pretrain"].get("monitor")
                )
    eval_jobs = [job for method in suite["methods"] for job in evaluation_jobs(suite, method, jobs, encoders)]
    return Plan(suite, list(jobs.values()), eval_jobs)


def pretraining_config(method: str, cls, params, corpus, pretrain: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """What a pretraining's key hashes: the method and its settings, the corpus, the shared protocol (for a method
    that trains nothing only what shapes the random initialisation and its BatchNorm statistics), the seed and the
    versions of the protocol, the method and the trunk."""
    if cls.needs_pretraining:
        protocol = {k: pretrain[k] for k in PRETRAIN_PROTOCOL_KEYS}
    else:
        protocol = {k: pretrain[k] for k in UNTRAINED_PROTOCOL_KEYS}
    config = {
        "method": method,
        "params": params,
        "corpus": with_version(corpus),
        "protocol": protocol,
        "seed": seed,
        "version": PROTOCOL_VERSION,
    }
    if cls.needs_pretraining and cls.version > 1:
        config["method_version"] = cls.version  # version 1 is left out: hashes made before methods had versions hold
    config["trunk_version"] = TRUNK_VERSION  # the trunk's initialisation shapes every encoder, trained or not
    return config


def evaluation_jobs(
    suite: Dict[str, Any], method: str, jobs: Dict[tuple, PretrainJob], encoders: Dict[str, Any]
) -> List[EvalJob]:
    """The evaluations of one row: every task x protocol x fraction x pretraining seed x evaluation seed."""
    out: List[EvalJob] = []
    pretrain = suite["pretrain"]
    for task in suite["tasks"]:
        corpus_name = task.get("pretrain", next(iter(corpora(suite))))
        if corpus_name not in corpora(suite):
            raise ConfigError(
                f"task {task['name']!r} pretrains on unknown corpus {corpus_name!r}; corpora: {sorted(corpora(suite))}"
            )
        # the fraction and protocol lists only say which jobs exist; they are not part of any job's identity
        task_identity = {k: v for k, v in task.items() if k not in ("fractions", "protocols")}
        task_identity["dataset"] = with_version(task["dataset"])
        for protocol_name in task["protocols"]:
            # which seeds run is not part of a job's identity: adding a seed must not invalidate the others
            settings = {k: v for k, v in evaluation_settings(suite, protocol_name, task).items() if k != "seeds"}
            for fraction in task["fractions"]:
                for pretrain_seed in pretrain["seeds"] if method not in encoders else [None]:
                    job = jobs[(method, corpus_name, None if pretrain_seed is None else int(pretrain_seed))]
                    for seed in evaluation_seeds(suite, protocol_name, task):
                        config = {
                            "pretrain": job.hash,
                            "task": task_identity,
                            "protocol": protocol_name,
                            "settings": settings,
                            "image_size": pretrain["image_size"],
                            "fraction": float(fraction),
                            "seed": int(seed),
                            "version": PROTOCOL_VERSION,
                        }
                        out.append(
                            EvalJob(
                                job, task, protocol_name, float(fraction), int(seed), config, stable_hash(config, 16)
                            )
                        )
    return out


def recorded_plan(plan: Plan, records: List[Dict[str, Any]]) -> Optional[Plan]:
    """The plan restricted to the methods that have at least one stored record of it (None if none has): what a
    suite's report shows when only some of its methods have been run. ``unrecorded`` names the suite's other
    methods, so the tables can say which rows are missing."""
    keys = {record["key"] for record in records}
    # methods outside the suite's roster that a run added with --methods (registered ones) are shown after its own,
    # then external encoders of earlier runs (--encoder), as their latest records describe them
    # (a CT method's records in the folder, a suite of the other track with this name, are not this suite's rows)
    added = [
        m
        for m in dict.fromkeys(record["method"] for record in records)
        if m not in plan.suite["methods"] and m in method_names() and method_class(m).track == "2d"
    ]
    external = {
        record["method"]: record["external"]
        for record in records
        if record["method"] not in plan.suite["methods"] and record.get("external")
    }
    if added or external:
        plan = build_plan({**with_encoders(plan.suite, external), "methods": list(plan.suite["methods"]) + added})
        added += list(external)
    methods = [
        m for m in plan.suite["methods"] if any(job.key in keys for job in plan.eval_jobs if job.pretrain.method == m)
    ]
    if not methods:
        return None
    if methods == plan.suite["methods"]:
        return plan
    narrowed = build_plan(
        {
            **plan.suite,
            "methods": methods,
            "encoders": {k: v for k, v in (plan.suite.get("encoders") or {}).items() if k in methods},
        }
    )
    narrowed.unrecorded = [m for m in plan.suite["methods"] if m not in methods and m not in added]
    return narrowed


def parse_shard(text: str) -> tuple:
    """``"K/N"`` (1 <= K <= N) -> (K, N), for cluster job arrays."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: write K/N, e.g. 2/8 for the second of eight shards") from None
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(
            f"--shard {text!r}: need 1 <= K <= N, e.g. 1/{max(count, 1)} ... {max(count, 1)}/{max(count, 1)}"
        )
    return index, count


def shard_plan(plan: Plan, index: int, count: int) -> Plan:
    """The part of the plan that shard ``index`` of ``count`` runs: whole pretrainings with all their evaluations,
    dealt round-robin over the pretraining keys in sorted order. Every job belongs to exactly one shard, so no two
    shards ever pretrain or evaluate the same thing; the split depends only on the plan."""
    keys = sorted(job.key for job in plan.pretrain_jobs)
    mine = {key for position, key in enumerate(keys) if position % count == index - 1}
    return Plan(
        plan.suite,
        [j for j in plan.pretrain_jobs if j.key in mine],
        [j for j in plan.eval_jobs if j.pretrain.key in mine],
    )
