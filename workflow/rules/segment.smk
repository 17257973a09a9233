rule segment_images:
    """Label PNGs (class ids when the run has been evaluated, cluster ids otherwise), overlays with
    a legend and eigenfunction heat maps for every image of a split: no labels needed.
    """
    input:
        model=path(paths.MODEL),
        data=segmentation_data,
    output:
        directory(path(paths.SEGMENTATION)),
    log:
        path(paths.LOG, name="segment_{run}"),
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
        slurm_partition=partition(1),
        runtime=120,
    params:
        dataset=lambda w: as_param(source_spec(config, w.dataset)),
        split=lambda w: segmentation_for(w)["split"],
        eigenfunctions=lambda w: (
            segmentation_for(w).get("eigenfunctions", 0)
            if RUNS[(w.dataset, w.run)].method.traits.learns_psi
            else 0
        ),
        run_dir=lambda w: filled(paths.RUN, w),
        weights_dir=lambda w, output: config.get("weights_dir", "weights"),
        data=lambda w, input: data_option(input.data),
    shell:
        f"{NES} segment --run {{params.run_dir:q}} --out {{output:q}} --dataset {{params.dataset:q}} "
        "--split {params.split:q} --eigenfunctions {params.eigenfunctions} --weights-dir {params.weights_dir:q} "
        "{params.data:q} > /dev/null"
