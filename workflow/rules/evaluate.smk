rule evaluate:
    """Scores of one run on {evaluation} = {dataset}-{protocol}, overlay panels and a report.
    Cached features for single-pass protocols; the backbone runs live for sliding windows.
    """
    input:
        model=path(paths.MODEL),
        features=lambda w: [evaluation(w).features] if evaluation(w).features else [],
        cache=lambda w: (
            cache_markers(evaluation(w).features) if evaluation(w).features else []
        ),
        twin=lambda w: [f"{kmeans_twin(w)}/metrics.json"] if kmeans_twin(w) else [],
        data=evaluation_data,
    output:
        metrics=path(paths.METRICS),
        per_image=path(paths.PER_IMAGE),
        overlays=report(
            directory(path(paths.OVERLAYS)),
            patterns=["{name}.png"],
            caption="../report/overlay.rst",
            category="{dataset}",
            subcategory="{run}",
            labels={"figure": "overlay {name}"},
        ),
        report=path(paths.EVALUATION_REPORT),
        per_class=report(
            path(paths.PER_CLASS_FIGURE),
            caption="../report/per_class_iou.rst",
            category="{dataset}",
            subcategory="{run}",
            labels={"figure": "per-class IoU ({evaluation})"},
        ),
        confusion=report(
            path(paths.CONFUSION_FIGURE),
            caption="../report/confusion.rst",
            category="{dataset}",
            subcategory="{run}",
            labels={"figure": "confusion ({evaluation})"},
        ),
        samples=report(
            path(paths.SAMPLES_FIGURE),
            caption="../report/samples.rst",
            category="{dataset}",
            subcategory="{run}",
            labels={"figure": "samples ({evaluation})"},
        ),
    log:
        path(paths.LOG, name="evaluate_{run}_{evaluation}"),
    benchmark:
        path(paths.BENCHMARK, name="evaluate_{run}_{evaluation}")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        gpu=evaluation_needs_gpu,
        slurm_partition=lambda w: partition(evaluation_needs_gpu(w)),
        runtime=240,
    params:
        spec=lambda w: as_param(evaluation(w)),
        spec_file=lambda w, output: spec_file(evaluation(w)),
        run_dir=lambda w: run_dir(config, RUNS[(w.dataset, w.run)]),
        compare=lambda w: ["--compare", kmeans_twin(w)] if kmeans_twin(w) else [],
        out_dir=lambda w, output: str(Path(output.metrics).parent),
        weights_dir=lambda w, output: config.get("weights_dir", "weights"),
        data=lambda w, input: data_option(input.data),
    shell:
        f"{NES} evaluate --run {{params.run_dir:q}} --spec {{params.spec_file:q}} "
        "--out-dir {params.out_dir:q} {params.compare:q} --weights-dir {params.weights_dir:q} {params.data:q} > /dev/null"
