rule build_graph:
    """Every token's k nearest tokens over a whole cached split (FAISS, exact or approximate with
    its recall@k in the log and metadata), with the degrees of the symmetrised graph, in
    {split}.zarr; the manifest {split}.json is written once the graph is complete (a rerun
    resumes after the last complete block)."""
    input:
        f"{RESULTS}/{{dataset}}/features/{{backbone}}/{{view}}/{{split}}.json",
    output:
        f"{RESULTS}/{{dataset}}/graphs/{{backbone}}/{{view}}/{{split}}.json",
    params:
        spec=lambda w: as_param(config.get("graph") or {}),
    log:
        f"{RESULTS}/{{dataset}}/logs/graph_{{backbone}}_{{view}}_{{split}}.log",
    threads: 2
    resources:
        mem_mb=16000,
    shell:
        "{NES} --threads {threads} graph --features {input} --spec {params.spec:q} --out {output} 2> {log}"


def eigen_params(w):
    path = f"{RESULTS}/{w.dataset}/graphs/{w.backbone}/{w.view}/{w.split}-eigen-K{w.K}-a{w.alpha}.npz"
    if path not in EIGEN:
        raise ValueError(f"{path}: no table asks for this eigenvector reference (a table with method spectral does)")
    return EIGEN[path]


rule eigenvectors:
    """The exact top-K eigenvectors of G = D^-1/2 A D^-1/2 + alpha * pixel graph over every token of
    an evaluation split (scipy eigsh), with the solver's wall time and peak memory: the reference
    that spectral runs cluster and that psi is aligned with."""
    input:
        features=f"{RESULTS}/{{dataset}}/features/{{backbone}}/{{view}}/{{split}}.json",
        graph=f"{RESULTS}/{{dataset}}/graphs/{{backbone}}/{{view}}/{{split}}.json",
    output:
        f"{RESULTS}/{{dataset}}/graphs/{{backbone}}/{{view}}/{{split}}-eigen-K{{K}}-a{{alpha}}.npz",
    wildcard_constraints:
        K=r"\d+",
        alpha=r"[0-9.e+-]+",
    params:
        spec=lambda w: as_param(eigen_params(w)),
    log:
        f"{RESULTS}/{{dataset}}/logs/eigen_{{backbone}}_{{view}}_{{split}}_K{{K}}_a{{alpha}}.log",
    threads: 2
    resources:
        mem_mb=16000,
    shell:
        "{NES} --threads {threads} eigen --spec {params.spec:q} --out {output} 2> {log}"


def nystrom_params(w):
    path = f"{RESULTS}/{w.dataset}/graphs/{w.backbone}/{w.view}/{w.split}-nystrom-{w.source}-K{w.K}-a{w.alpha}.npz"
    if path not in NYSTROM:
        raise ValueError(f"{path}: no table asks for this Nystrom extension (a table with method spectral_inductive does)")
    return NYSTROM[path]


rule nystrom:
    """The exact top-K eigenvectors of the training split's G ({source} dataset) extended to every
    token of an evaluated split by the Nystrom formula over its k nearest training tokens (once
    per backbone, K and alpha; every seed of spectral_inductive clusters it)."""
    input:
        eigen=lambda w: nystrom_params(w)["eigen"]["path"],
        train_features=lambda w: nystrom_params(w)["eigen"]["features"],
        train_graph=lambda w: nystrom_params(w)["eigen"]["graph"],
        features=f"{RESULTS}/{{dataset}}/features/{{backbone}}/{{view}}/{{split}}.json",
    output:
        f"{RESULTS}/{{dataset}}/graphs/{{backbone}}/{{view}}/{{split}}-nystrom-{{source}}-K{{K}}-a{{alpha}}.npz",
    wildcard_constraints:
        K=r"\d+",
        alpha=r"[0-9.e+-]+",
        source=r"[^/-]+",
    params:
        spec=lambda w: as_param(nystrom_params(w)),
    log:
        f"{RESULTS}/{{dataset}}/logs/nystrom_{{backbone}}_{{view}}_{{split}}_{{source}}_K{{K}}_a{{alpha}}.log",
    threads: 2
    resources:
        mem_mb=16000,
    shell:
        "{NES} --threads {threads} nystrom --spec {params.spec:q} --out {output} 2> {log}"


def alignment(w):
    return alignment_spec(config, RUNS[(w.dataset, w.run)], w.evaluation)


rule align:
    """How well a run's hard partition of the evaluated split serves its exact G (capture of the
    top-K spectrum, one-hot alignment, perplexity) and, for psi, its logits' alignment with the
    exact top-K eigenvectors (a diagnostic)."""
    input:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
        eigen=lambda w: alignment(w)["path"],
        features=lambda w: alignment(w)["features"],
        graph=lambda w: alignment(w)["graph"],
    output:
        f"{RESULTS}/{{dataset}}/runs/{{run}}/{{evaluation}}/alignment.json",
    params:
        spec=lambda w: as_param(alignment(w)),
        run_dir=lambda w: run_dir(config, RUNS[(w.dataset, w.run)]),
    log:
        f"{RESULTS}/{{dataset}}/logs/align_{{run}}_{{evaluation}}.log",
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "{NES} --threads {threads} align --run {params.run_dir} --spec {params.spec:q} --out {output} > /dev/null 2> {log}"
