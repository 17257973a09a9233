rule train:
    """psi by the NeuralEF objective on per-batch kernels (or batches of the dataset-wide graph);
    a rerun resumes from the run's last checkpoint."""
    input:
        features=lambda w: run_spec(w).features,
        cache=lambda w: cache_markers(run_spec(w).features),
        graph=lambda w: [run_spec(w).graph] if run_spec(w).graph else [],
        # the capture monitor's held-out kernel: read, but a changed protocol cache does not retrain
        heldout=lambda w: (
            [ancient(p) for p in [heldout, *cache_markers(heldout)]]
            if (heldout := run_spec(w).heldout)
            else []
        ),
    output:
        model=path(paths.MODEL),
        log_csv=path(paths.TRAIN_LOG),
        curves=report(
            path(paths.CURVES),
            caption="../report/loss.rst",
            category="{dataset}",
            subcategory="{run}",
            labels={"figure": "training curves"},
        ),
    log:
        path(paths.LOG, name="fit_{run}"),
    benchmark:
        path(paths.BENCHMARK, name="fit_{run}")
    wildcard_constraints:
        run=f"({TRAINED})-.+",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=12000,
        gpu=1,
        slurm_partition=partition(1),
        runtime=480,
    params:
        spec=lambda w: as_param(run_spec(w)),
        spec_file=lambda w, output: spec_file(run_spec(w)),
        run_dir=lambda w: run_dir(config, run_spec(w)),
    shell:
        f"{NES} fit --spec {{params.spec_file:q}} --run {{params.run_dir:q}}"


rule fit_kmeans:
    """K centres on tokens: of the backbone's high-level features (kmeans, the baseline; on the
    evaluated split itself for kmeans_transductive, the control of spectral), of psi's hidden
    features (nes_star, the paper's Ours*) or of the row-normalised exact eigenvectors of the
    evaluated split's graph (spectral, the transductive reference) or of the training split's
    graph (spectral_inductive, labelling the evaluated split through the Nystrom extension).
    """
    input:
        unpack(kmeans_inputs),
    output:
        model=path(paths.MODEL),
    log:
        path(paths.LOG, name="fit_{run}"),
    benchmark:
        path(paths.BENCHMARK, name="fit_{run}")
    wildcard_constraints:
        run=f"({CLUSTERED})-.+",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        slurm_partition=partition(0),
        runtime=60,
    params:
        spec=lambda w: as_param(run_spec(w)),
        spec_file=lambda w, output: spec_file(run_spec(w)),
        run_dir=lambda w: run_dir(config, run_spec(w)),
    shell:
        f"{NES} fit --spec {{params.spec_file:q}} --run {{params.run_dir:q}}"
