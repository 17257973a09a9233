rule extract_features:
    """Backbone features, psi inputs and pixel vectors of one shard of a split under one view into
    {split}.zarr/shard-{shard}-of-{shards}; its manifest extracted.json is written into the shard
    once it is complete (a rerun resumes an interrupted shard)."""
    input:
        data=extraction_data,
    output:
        # the shard's manifest, written into it once complete: a deleted cache is re-extracted
        path(paths.FEATURE_SHARD),
    log:
        path(paths.LOG, name="extract_{backbone}_{view}_{split}_{shard}-of-{shards}"),
    benchmark:
        path(
            paths.BENCHMARK,
            name="extract_{backbone}_{view}_{split}_{shard}-of-{shards}",
        )
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
        slurm_partition=partition(1),
        runtime=120,
    params:
        spec=lambda w: as_param(
            extraction_spec(config, w.dataset, w.backbone, w.view, w.split)
        ),
        spec_file=lambda w, output: spec_file(
            extraction_spec(config, w.dataset, w.backbone, w.view, w.split)
        ),
        cache=lambda w: filled(paths.FEATURE_STORE, w),
        data=lambda w, input: data_option(input.data),
    shell:
        f"{NES} extract --spec {{params.spec_file:q}} --cache {{params.cache:q}} "
        "--shard {wildcards.shard} {wildcards.shards} --overwrite {params.data:q}"


rule gather_features:
    """The cache's manifest {split}.json, once every shard is complete: what later stages read."""
    input:
        shard_manifests,
    output:
        path(paths.FEATURES),
    log:
        path(paths.LOG, name="gather_{backbone}_{view}_{split}"),
    localrule: True
    conda:
        ENV
    shell:
        f"{NES} gather --out {{output:q}} {{input:q}}"
