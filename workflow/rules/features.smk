rule extract_features:
    """Backbone features, psi inputs and pixel vectors of one shard of a split under one view into
    {split}.zarr/shard-{shard}-of-{shards}; its manifest extracted.json is written into the shard
    once it is complete (a rerun resumes an interrupted shard)."""
    input:
        data=extraction_data,
    output:
        # the shard's manifest, written into it once complete: a deleted cache is re-extracted
        f"{RESULTS}/{{dataset}}/features/{{backbone}}/{{view}}/{{split}}.zarr/shard-{{shard}}-of-{{shards}}/extracted.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/extract_{{backbone}}_{{view}}_{{split}}_{{shard}}-of-{{shards}}.log",
    benchmark:
        f"{RESULTS}/{{dataset}}/benchmarks/extract_{{backbone}}_{{view}}_{{split}}_{{shard}}-of-{{shards}}.tsv"
    wildcard_constraints:
        shard=r"\d+",
        shards=r"\d+",
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
        cache=lambda w: f"{RESULTS}/{w.dataset}/features/{w.backbone}/{w.view}/{w.split}.zarr",
        data=lambda w, input: data_option(input.data),
    shell:
        f"{NES} extract --spec {{params.spec_file:q}} --cache {{params.cache:q}} "
        "--shard {wildcards.shard} {wildcards.shards} --overwrite {params.data:q}"


rule gather_features:
    """The cache's manifest {split}.json, once every shard is complete: what later stages read."""
    input:
        shard_manifests,
    output:
        f"{RESULTS}/{{dataset}}/features/{{backbone}}/{{view}}/{{split}}.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/gather_{{backbone}}_{{view}}_{{split}}.log",
    localrule: True
    conda:
        ENV
    shell:
        f"{NES} gather --out {{output:q}} {{input:q}}"
