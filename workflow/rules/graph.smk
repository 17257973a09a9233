rule build_graph:
    """Every token's k nearest tokens over a whole cached split (FAISS, exact or approximate with
    its recall@k in the log and metadata), with the degrees of the symmetrised graph, in
    {split}.zarr; the manifest {split}.json is written once the graph is complete (a rerun
    resumes after the last complete block)."""
    input:
        features=rules.gather_features.output[0],
        cache=shard_manifests,
    output:
        path(paths.GRAPH),
    log:
        path(paths.LOG, name="graph_{backbone}_{view}_{split}"),
    benchmark:
        path(paths.BENCHMARK, name="graph_{backbone}_{view}_{split}")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=16000,
        slurm_partition=partition(0),
        runtime=240,
    params:
        spec=lambda w: as_param(config.get("graph") or {}),
    shell:
        f"{NES} graph --features {{input.features:q}} --spec {{params.spec:q}} --out {{output:q}}"


rule eigenvectors:
    """The exact top-K eigenvectors of G = D^-1/2 A D^-1/2 + alpha * pixel graph over every token of
    a split (scipy eigsh), with the solver's wall time and peak memory: the reference that the
    spectral methods cluster and that every run's partition is measured on."""
    input:
        features=rules.gather_features.output[0],
        cache=shard_manifests,
        graph=rules.build_graph.output[0],
    output:
        path(paths.EIGEN),
    log:
        path(paths.LOG, name="eigen_{backbone}_{view}_{split}_{reference}"),
    benchmark:
        path(paths.BENCHMARK, name="eigen_{backbone}_{view}_{split}_{reference}")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=16000,
        slurm_partition=partition(0),
        runtime=240,
    params:
        spec=lambda w: as_param(eigen_params(w)),
        spec_file=lambda w, output: spec_file(eigen_params(w)),
    shell:
        f"{NES} eigen --spec {{params.spec_file:q}} --out {{output:q}}"


rule nystrom:
    """The exact top-K eigenvectors of the training split's G ({source} dataset) extended to every
    token of an evaluated split by the Nystrom formula over its k nearest training tokens (once
    per backbone, K and alpha; every seed of spectral_inductive clusters it)."""
    input:
        eigen=lambda w: nystrom_params(w).eigen.path,
        train_features=lambda w: nystrom_params(w).eigen.features,
        train_cache=lambda w: cache_markers(nystrom_params(w).eigen.features),
        train_graph=lambda w: nystrom_params(w).eigen.graph,
        features=rules.gather_features.output[0],
        cache=shard_manifests,
    output:
        path(paths.NYSTROM),
    log:
        path(paths.LOG, name="nystrom_{backbone}_{view}_{split}_{source}_{reference}"),
    benchmark:
        path(
            paths.BENCHMARK,
            name="nystrom_{backbone}_{view}_{split}_{source}_{reference}",
        )
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=16000,
        slurm_partition=partition(0),
        runtime=240,
    params:
        spec=lambda w: as_param(nystrom_params(w)),
        spec_file=lambda w, output: spec_file(nystrom_params(w)),
    shell:
        f"{NES} nystrom --spec {{params.spec_file:q}} --out {{output:q}}"


rule align:
    """How well a run's hard partition of the evaluated split serves its exact G (capture of the
    top-K spectrum, one-hot alignment, perplexity) and, for psi, its logits' alignment with the
    exact top-K eigenvectors (a diagnostic)."""
    input:
        model=path(paths.MODEL),
        eigen=lambda w: alignment(w).path,
        features=lambda w: alignment(w).features,
        cache=lambda w: cache_markers(alignment(w).features),
        graph=lambda w: alignment(w).graph,
    output:
        path(paths.ALIGNMENT),
    log:
        path(paths.LOG, name="align_{run}_{evaluation}"),
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        slurm_partition=partition(0),
        runtime=60,
    params:
        spec=lambda w: as_param(alignment(w)),
        spec_file=lambda w, output: spec_file(alignment(w)),
        run_dir=lambda w: run_dir(config, RUNS[(w.dataset, w.run)]),
    shell:
        f"{NES} align --run {{params.run_dir:q}} --spec {{params.spec_file:q}} --out {{output:q}} > /dev/null"
