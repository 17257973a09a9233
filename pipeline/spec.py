"""What a run is, typed: the `Method` registry and the frozen settings every stage reads.

The planner (plan.py) builds a `RunSpec` from the config; the workflow hands it to `nes fit` as
canonical JSON (`to_json`, what Snakemake compares to decide a rerun); `model.pt` and the run's
`config.yaml` store `to_dict()`; everything else reads attributes (`spec.train.K`). `from_dict`
is the one place plain data becomes settings: it checks types, names the key at fault and
resolves beta. The JSON form is the format of record: `RunSpec.from_dict(d).to_dict() == d` for
every spec the planner writes (tests/test_spec.py checks the rules' parameters byte for byte).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

from .errors import InputError


class Method(StrEnum):
    """A way of turning cached tokens into clusters; its traits live in `TRAITS`."""

    KMEANS = "kmeans"
    KMEANS_TOKENS = "kmeans_tokens"
    KMEANS_INPUT = "kmeans_input"
    KMEANS_TRANSDUCTIVE = "kmeans_transductive"
    NES = "nes"
    NES_STAR = "nes_star"
    SPECTRAL = "spectral"
    SPECTRAL_INDUCTIVE = "spectral_inductive"

    @classmethod
    def parse(cls, name: Any, where: str = "method") -> Method:
        try:
            return cls(name)
        except ValueError:
            raise InputError(f"{where}: unknown method {name!r}; expected one of {', '.join(cls)}") from None

    @property
    def traits(self) -> MethodTraits:
        return TRAITS[self]


class Embedding(StrEnum):
    """What a run maps each token to before its read-out (models.RunModel.embed)."""

    BACKBONE = "backbone"  # the backbone's high-level features, the kernel's (the K-means baseline)
    FINAL_TOKENS = "final_tokens"  # the last layer of psi's input: a ViT's final-block tokens, a CNN's deepest stage
    PSI_INPUT = "psi_input"  # psi's whole input, every cached layer (what psi itself sees)
    PSI_OUTPUTS = "psi_outputs"  # psi's K outputs, the learned eigenfunctions (nes)
    PSI_HIDDEN = "psi_hidden"  # psi's features before its orthogonal head (nes_star, the paper's Ours*)
    STORED = "stored"  # exact eigenvectors of the evaluated split's tokens, stored by item (spectral)

    @property
    def cache_array(self) -> str:
        """The cached array it is computed from: the backbone's features or psi's input."""
        return "high" if self in (Embedding.BACKBONE, Embedding.STORED) else "input"

    @property
    def of_backbone(self) -> bool:
        """Backbone features, as cached: what the K-means baselines cluster."""
        return self in (Embedding.BACKBONE, Embedding.FINAL_TOKENS, Embedding.PSI_INPUT)


class ReadOut(StrEnum):
    """How a run turns a token's embedding into cluster logits (models.RunModel.read_out)."""

    ARGMAX = "argmax"  # the embedding over tau_min: psi's outputs as soft one-hot clusters
    CENTRES = "centres"  # the nearest of K-means centres fitted on the same row-normalised embedding


def read_out_of(method: Method, train: TrainSettings | None) -> ReadOut:
    """psi's outputs are read by their argmax, unless trained as plain eigenfunctions
    (`train.output: eigenfunctions`), which K-means reads out as the exact spectral methods are;
    every other embedding is read out by K-means centres."""
    plain = train is not None and train.plain_eigenfunctions
    return ReadOut.ARGMAX if method.traits.embedding is Embedding.PSI_OUTPUTS and not plain else ReadOut.CENTRES


@dataclass(frozen=True)
class MethodTraits:
    """Everything the planner, the rules, evaluation and the tables need to know about a method.

    label: the tables' row name. learns_psi: trained by rule `train` (others by `fit_kmeans`).
    embedding: what its tokens are embedded into (the read-out follows: `read_out_of`).
    psi_from: the method whose psi it borrows (nes_star clusters a nes run's hidden features).
    evaluated_split: fit on the split a table evaluates and filed under that dataset (needs the
    table's protocol). transductive: labels only the split it was fit on (a control).
    eigen / nystrom: needs the exact eigenvector reference / its Nystrom extension.
    graph_kind: the feature graph behind its clusters in the tables (None: read `train.graph`).
    depends_on: the training keys (beyond the id's) whose values change its result; None: all.
    run_id: the id's format; `{extra}` holds the settings off the dataset's defaults.
    """

    label: str
    learns_psi: bool = False
    embedding: Embedding = Embedding.BACKBONE
    psi_from: Method | None = None
    evaluated_split: bool = False
    transductive: bool = False
    eigen: bool = False
    nystrom: bool = False
    graph_kind: str | None = "none"
    depends_on: tuple[str, ...] | None = ()
    run_id: str = "{method}-{backbone}-K{K}-s{seed}"

    @property
    def uses_psi(self) -> bool:
        """Its model holds psi (nes, and nes_star, which clusters psi's hidden features)."""
        return self.embedding in (Embedding.PSI_OUTPUTS, Embedding.PSI_HIDDEN)

    @property
    def item_lookup(self) -> bool:
        """Labels come from a stored embedding of the evaluated split, by item."""
        return self.embedding is Embedding.STORED


_PSI_ID = "{method}-{backbone}-K{K}-a{alpha}-b{beta}{graph}{extra}-s{seed}"
_SPECTRAL_ID = "{method}-{backbone}-K{K}-a{alpha}-{protocol}{extra}-s{seed}"
TRAITS: dict[Method, MethodTraits] = {
    Method.KMEANS: MethodTraits("K-means"),
    Method.KMEANS_TOKENS: MethodTraits("K-means (final tokens)", embedding=Embedding.FINAL_TOKENS),
    Method.KMEANS_INPUT: MethodTraits("K-means (psi's input)", embedding=Embedding.PSI_INPUT),
    Method.KMEANS_TRANSDUCTIVE: MethodTraits(
        "K-means (transductive)",
        evaluated_split=True,
        transductive=True,
        run_id="{method}-{backbone}-K{K}-{protocol}-s{seed}",
    ),
    Method.NES: MethodTraits(
        "Ours", learns_psi=True, embedding=Embedding.PSI_OUTPUTS, graph_kind=None, depends_on=None, run_id=_PSI_ID
    ),
    Method.NES_STAR: MethodTraits(
        "Ours*",
        embedding=Embedding.PSI_HIDDEN,
        psi_from=Method.NES,
        graph_kind=None,
        depends_on=None,
        run_id=_PSI_ID,
    ),
    Method.SPECTRAL: MethodTraits(
        "Spectral (exact, transductive)",
        evaluated_split=True,
        transductive=True,
        embedding=Embedding.STORED,
        eigen=True,
        graph_kind="exact",
        depends_on=("pixel_knn",),
        run_id=_SPECTRAL_ID,
    ),
    Method.SPECTRAL_INDUCTIVE: MethodTraits(
        "Spectral (exact, Nystrom)",
        evaluated_split=True,
        embedding=Embedding.STORED,
        eigen=True,
        nystrom=True,
        graph_kind="exact",
        depends_on=("pixel_knn", "knn_k"),
        run_id=_SPECTRAL_ID,
    ),
}


# the K-means baseline: every other run's evaluation report shows its predictions beside its own
BASELINE = Method.KMEANS


def fmt(value: Any) -> str:
    """A number as ids and file names spell it: 0.3, 1e-05, 128."""
    return f"{value:g}" if isinstance(value, float) else str(value)


OUTPUTS = ("onehot", "eigenfunctions")


def default_beta(num_eigenfunctions: int, output: str = "onehot") -> float:
    """beta * K = 20.48 in every published run (0.08 at K = 256). With `output: eigenfunctions`
    the penalty is NeuralEF's deflation, whose weight is 1 (any weight >= 1 deflates)."""
    return 1.0 if output == "eigenfunctions" else 20.48 / num_eigenfunctions


def resolved_beta(beta: float | None, K: int, output: str = "onehot") -> float:
    """The penalty weight a run uses, rounded as ids and params carry it: `beta: null` and
    `beta: 0.08` at K = 256 are one run."""
    return round(float(beta) if beta is not None else default_beta(K, output), 6)


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    """data[key] checked against `kind` (bool is not a number here), naming `where.key`."""
    if key not in data:
        if default is ...:
            raise InputError(f"{where}: missing {key!r}")
        return default
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None and type(None) in kinds:
        return value
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise InputError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


NUMBER = (int, float)


def _mapping(data: Any, where: str) -> None:
    """A spec read from JSON must be a mapping of its fields."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")


def _precision(data: dict[str, Any], key: str, where: str, allowed: tuple[str, ...] = ("float32", "bfloat16")) -> str:
    value = _get(data, key, str, where, "float32")
    if value not in allowed:
        raise InputError(f"{where}.{key}: expected {' or '.join(allowed)}, got {value!r}")
    return value


def _pairs(data: dict[str, Any], key: str, where: str) -> tuple[tuple[int, float], ...]:
    """[[k, weight], ...] as tuples, numbers as given (2 stays 2: the JSON form must not change)."""
    pairs = _get(data, key, (list, tuple), where)
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, NUMBER) for v in p) for p in pairs):
        raise InputError(f"{where}.{key}: expected [k, position weight] pairs, got {pairs!r}")
    return tuple((p[0], p[1]) for p in pairs)


@dataclass(frozen=True)
class TrainSettings:
    """psi and the NeuralEF objective (the config's `train:` section, method.md sections 3-5).
    Numbers keep the type the config gave them (1 stays 1) so the JSON form is unchanged;
    `alpha` is always a float and `beta` is resolved (`resolved_beta`)."""

    K: int
    alpha: float
    beta: float
    epochs: int
    batch_size: int
    lr: float
    lr_min: float
    tau_max: float
    tau_min: float
    t: float
    knn_k: int
    pixel_knn: tuple[tuple[int, float], ...]
    depth: int
    heads: int
    dim_head: int
    mlp_ratio: float
    graph: str = "batch"
    monitor: int = 0
    image_centred: bool = False
    normalised_cut: bool = False
    # onehot: the paper's soft one-hot clusters; eigenfunctions: NeuralEF's plain eigenfunctions,
    # read out by K-means on psi's row-normalised outputs as the exact spectral methods are
    output: str = "onehot"
    # psi's forward: float32, bfloat16 autocast (the objective stays float32), or auto (bfloat16 where native)
    precision: str = "float32"
    search_precision: str = "float32"  # the batch k-NN search's similarity products: float32, or bfloat16
    # keys the config left out (graph, monitor) stay out of the JSON form
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    OPTIONAL: ClassVar[tuple[str, ...]] = ("graph", "monitor")  # absent in some configs: written only when given
    # written only when off this value
    BEYOND_PAPER: ClassVar[dict[str, Any]] = {
        "image_centred": False,
        "normalised_cut": False,
        "output": "onehot",
        "precision": "float32",
        "search_precision": "float32",
    }

    @property
    def plain_eigenfunctions(self) -> bool:
        """`output: eigenfunctions`: NeuralEF's deflated objective on plain outputs, clusters by
        K-means on them (beyond the paper)."""
        return self.output == "eigenfunctions"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "train") -> TrainSettings:
        K = _get(data, "K", int, where)
        pixel_knn = _pairs(data, "pixel_knn", where)
        graph = _get(data, "graph", str, where, "batch")
        if graph not in ("batch", "dataset"):
            raise InputError(f"{where}.graph: expected batch or dataset, got {graph!r}")
        output = _get(data, "output", str, where, "onehot")
        if output not in OUTPUTS:
            raise InputError(f"{where}.output: expected {' or '.join(OUTPUTS)}, got {output!r}")
        if output == "eigenfunctions" and _get(data, "normalised_cut", bool, where, False):
            raise InputError(
                f"{where}: normalised_cut weights one-hot clusters; it does not apply to output eigenfunctions"
            )
        return cls(
            K=K,
            alpha=float(_get(data, "alpha", NUMBER, where)),
            beta=resolved_beta(_get(data, "beta", (*NUMBER, type(None)), where, None), K, output),
            epochs=_get(data, "epochs", int, where),
            batch_size=_get(data, "batch_size", int, where),
            lr=_get(data, "lr", NUMBER, where),
            lr_min=_get(data, "lr_min", NUMBER, where),
            tau_max=_get(data, "tau_max", NUMBER, where),
            tau_min=_get(data, "tau_min", NUMBER, where),
            t=_get(data, "t", NUMBER, where),
            knn_k=_get(data, "knn_k", int, where),
            pixel_knn=pixel_knn,
            depth=_get(data, "depth", int, where),
            heads=_get(data, "heads", int, where),
            dim_head=_get(data, "dim_head", int, where),
            mlp_ratio=_get(data, "mlp_ratio", NUMBER, where),
            graph=graph,
            monitor=_get(data, "monitor", int, where, 0) or 0,
            image_centred=_get(data, "image_centred", bool, where, False),
            normalised_cut=_get(data, "normalised_cut", bool, where, False),
            output=output,
            precision=_precision(data, "precision", where, ("float32", "bfloat16", "auto")),
            search_precision=_precision(data, "search_precision", where),
            given=frozenset(k for k in cls.OPTIONAL if k in data),
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "given"}
        out["pixel_knn"] = [list(p) for p in self.pixel_knn]
        for name in self.OPTIONAL:
            if name not in self.given:
                del out[name]
        for name, off in self.BEYOND_PAPER.items():
            if out[name] == off:
                del out[name]
        return out


@dataclass(frozen=True)
class KMeansSettings:
    niter: int
    max_points: int

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "kmeans") -> KMeansSettings:
        return cls(niter=_get(data, "niter", int, where), max_points=_get(data, "max_points", int, where))

    def to_dict(self) -> dict[str, Any]:
        return {"niter": self.niter, "max_points": self.max_points}


@dataclass(frozen=True)
class ExtractSpec:
    """One split's features under one view (rule `extract_features`, `nes extract`): how the
    dataset is read, the backbone, the view, and the augmented copies of training caches (`views`
    random rescales in `scale`, with `flip`; one plain copy for evaluation caches)."""

    source: dict[str, Any]
    backbone_spec: dict[str, Any]
    split: str
    view: dict[str, Any]
    views: int
    scale: tuple[float, float]
    flip: bool
    seed: int
    batch_size: int
    device: str = "auto"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "extraction spec") -> ExtractSpec:
        _mapping(data, where)
        scale = _get(data, "scale", (list, tuple), where)
        if len(scale) != 2 or not all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in scale):
            raise InputError(f"{where}.scale: expected [low, high] numbers, got {scale!r}")
        return cls(
            source=dict(_get(data, "dataset_spec", dict, where)),
            backbone_spec=dict(_get(data, "backbone_spec", dict, where)),
            split=_get(data, "split", str, where),
            view=dict(_get(data, "view", dict, where)),
            views=_get(data, "views", int, where),
            scale=(scale[0], scale[1]),
            flip=_get(data, "flip", bool, where),
            seed=_get(data, "seed", int, where),
            batch_size=_get(data, "batch_size", int, where),
            device=_get(data, "device", str, where, "auto"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_spec": self.source,
            "backbone_spec": self.backbone_spec,
            "split": self.split,
            "view": self.view,
            "views": self.views,
            "scale": list(self.scale),
            "flip": self.flip,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "device": self.device,
        }

    def to_json(self) -> str:
        return canonical_json(self.to_dict())


@dataclass(frozen=True)
class EigenRef:
    """The exact top-K eigenvectors of a cached split's G (rule `eigenvectors`): where they go
    (`path`), the split's features and dataset-wide graph manifests, and G's settings."""

    path: str
    graph: str
    features: str
    K: int
    alpha: float
    pixel_knn: tuple[tuple[int, float], ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "eigen") -> EigenRef:
        return cls(
            path=_get(data, "path", str, where),
            graph=_get(data, "graph", str, where),
            features=_get(data, "features", str, where),
            K=_get(data, "K", int, where),
            alpha=float(_get(data, "alpha", NUMBER, where)),
            pixel_knn=_pairs(data, "pixel_knn", where),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "graph": self.graph,
            "features": self.features,
            "K": self.K,
            "alpha": self.alpha,
            "pixel_knn": [list(p) for p in self.pixel_knn],
        }


@dataclass(frozen=True)
class NystromRef:
    """The training split's eigenvectors (`eigen`) extended to every token of an evaluated split
    (`features`) over its `k` nearest training tokens (rule `nystrom`); `graph` holds the config's
    search settings."""

    path: str
    eigen: EigenRef
    features: str
    k: int
    graph: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "nystrom") -> NystromRef:
        return cls(
            path=_get(data, "path", str, where),
            eigen=EigenRef.from_dict(_get(data, "eigen", dict, where), f"{where}.eigen"),
            features=_get(data, "features", str, where),
            k=_get(data, "k", int, where),
            graph=dict(_get(data, "graph", dict, where, {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "eigen": self.eigen.to_dict(),
            "features": self.features,
            "k": self.k,
            "graph": dict(self.graph),
        }


@dataclass(frozen=True)
class RunSpec:
    """One run: what is fit, on which cache, with which settings, and where it is filed.

    `source` is the dataset's reading settings (datasets.load_dataset's input) for the split the
    run is fit on (`train_split` under `train_view`). `train` holds psi's settings (nes,
    nes_star); other methods carry only K (and alpha for the spectral methods).
    """

    run: str
    method: Method
    seed: int
    dataset: str
    backbone: str
    source: dict[str, Any]
    train_split: str
    train_view: dict[str, Any]
    backbone_spec: dict[str, Any]
    features: str
    device: str
    K: int
    alpha: float | None = None
    train: TrainSettings | None = None
    kmeans: KMeansSettings | None = None
    evaluation: str | None = None  # {dataset}-{protocol} of the evaluated split (evaluated_split methods)
    graph: str | None = None  # the dataset-wide graph's manifest (nes with train.graph: dataset)
    heldout: str | None = None  # the capture monitor's held-out cache (nes with train.monitor)
    nes_run: str | None = None  # the nes run whose psi nes_star clusters
    eigen: EigenRef | None = None
    nystrom: NystromRef | None = None
    settings: str = ""  # settings off the dataset's defaults, as tables show them ("" for default runs)

    @property
    def traits(self) -> MethodTraits:
        return self.method.traits

    @property
    def psi(self) -> TrainSettings:
        """psi's settings; only runs that hold psi have them."""
        if self.train is None:
            raise InputError(f"{self.run}: a {self.method} run has no psi settings")
        return self.train

    @property
    def embedding(self) -> Embedding:
        return self.method.traits.embedding

    @property
    def read_out(self) -> ReadOut:
        return read_out_of(self.method, self.train)

    @property
    def beta(self) -> float | None:
        return self.train.beta if self.train is not None else None

    @property
    def graph_kind(self) -> str | None:
        """The feature graph behind its clusters, as the tables name it."""
        kind = self.traits.graph_kind
        if kind is None:
            return self.train.graph if self.train is not None else "batch"
        return None if kind == "none" else kind

    @property
    def lookup_features(self) -> str:
        """The features manifest of the split a stored embedding covers (item_lookup methods)."""
        return self.nystrom.features if self.nystrom is not None else self.features

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "run spec") -> RunSpec:
        _mapping(data, where)
        method = Method.parse(_get(data, "method", str, where), f"{where}.method")
        ds = dict(_get(data, "dataset_spec", dict, where))
        train = dict(_get(data, "train", dict, where))
        kmeans = _get(data, "kmeans", dict, where, None)
        eigen = _get(data, "eigen", dict, where, None)
        nystrom = _get(data, "nystrom", dict, where, None)
        return cls(
            run=_get(data, "run", str, where),
            method=method,
            seed=_get(data, "seed", int, where),
            dataset=_get(data, "dataset", str, where),
            backbone=_get(data, "backbone", str, where),
            source={k: v for k, v in ds.items() if k not in ("train_split", "train_view")},
            train_split=_get(ds, "train_split", str, f"{where}.dataset_spec"),
            train_view=dict(_get(ds, "train_view", dict, f"{where}.dataset_spec")),
            backbone_spec=dict(_get(data, "backbone_spec", dict, where)),
            features=_get(data, "features", str, where),
            device=_get(data, "device", str, where, "auto"),
            K=_get(train, "K", int, f"{where}.train"),
            alpha=float(train["alpha"]) if train.get("alpha") is not None else None,
            train=TrainSettings.from_dict(train, f"{where}.train") if method.traits.uses_psi else None,
            kmeans=KMeansSettings.from_dict(kmeans, f"{where}.kmeans") if kmeans is not None else None,
            evaluation=_get(data, "evaluation", str, where, None),
            graph=_get(data, "graph", str, where, None),
            heldout=_get(data, "heldout", (str, type(None)), where, None),
            nes_run=_get(data, "nes_run", str, where, None),
            eigen=EigenRef.from_dict(eigen, f"{where}.eigen") if eigen is not None else None,
            nystrom=NystromRef.from_dict(nystrom, f"{where}.nystrom") if nystrom is not None else None,
            settings=_get(data, "settings", str, where, ""),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run": self.run,
            "method": str(self.method),
            "seed": self.seed,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "dataset_spec": {**self.source, "train_split": self.train_split, "train_view": self.train_view},
            "backbone_spec": self.backbone_spec,
            "features": self.features,
            "device": self.device,
        }
        if self.train is not None:
            out["train"] = self.train.to_dict()
        else:
            out["train"] = {"K": self.K, **({"alpha": self.alpha} if self.alpha is not None else {})}
        optional = {
            "kmeans": self.kmeans.to_dict() if self.kmeans else None,
            "evaluation": self.evaluation,
            "graph": self.graph,
            "nes_run": self.nes_run,
            "eigen": self.eigen.to_dict() if self.eigen else None,
            "nystrom": self.nystrom.to_dict() if self.nystrom else None,
            "settings": self.settings or None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        if self.method is Method.NES and self.train is not None and self.train.monitor:
            out["heldout"] = self.heldout  # null when every protocol slides windows
        return out

    def to_json(self) -> str:
        """Canonical JSON: what Snakemake compares to decide whether a run's parameters changed."""
        return canonical_json(self.to_dict())


@dataclass(frozen=True)
class EvaluationSpec:
    """One evaluation of a run (rule `evaluate`, `nes evaluate`): the dataset's reading settings,
    the split, the protocol's view, the cache to read (None: run the backbone live) and output
    options."""

    source: dict[str, Any]
    split: str
    protocol: str
    view: dict[str, Any]
    features: str | None
    overlays: int = 4
    batch_size: int = 8
    device: str = "auto"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "evaluation spec") -> EvaluationSpec:
        _mapping(data, where)
        return cls(
            source=dict(_get(data, "dataset_spec", dict, where)),
            split=_get(data, "split", str, where),
            protocol=_get(data, "protocol", str, where),
            view=dict(_get(data, "view", dict, where)),
            features=_get(data, "features", (str, type(None)), where, None),
            overlays=_get(data, "overlays", int, where, 4),
            batch_size=_get(data, "batch_size", int, where, 8),
            device=_get(data, "device", str, where, "auto"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_spec": self.source,
            "split": self.split,
            "protocol": self.protocol,
            "view": self.view,
            "features": self.features,
            "overlays": self.overlays,
            "batch_size": self.batch_size,
            "device": self.device,
        }

    def to_json(self) -> str:
        return canonical_json(self.to_dict())


def canonical_json(obj: Any) -> str:
    """Sorted keys, default separators: the form the rules' parameters have always had."""
    return json.dumps(obj, sort_keys=True)
