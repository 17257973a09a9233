def shard_manifests(w):
    n = shard_count(config, w.dataset)
    return [f"{RESULTS}/{w.dataset}/features/{w.backbone}/{w.view}/{w.split}.shards/{i}-of-{n}.json" for i in range(n)]


rule extract_features:
    """Backbone features, psi inputs and pixel vectors of one shard of a split under one view into
    {split}.zarr/shard-{shard}-of-{shards}; its manifest is written once the shard is complete (a
    rerun resumes an interrupted shard)."""
    output:
        f"{RESULTS}/{{dataset}}/features/{{backbone}}/{{view}}/{{split}}.shards/{{shard}}-of-{{shards}}.json",
    wildcard_constraints:
        shard=r"\d+",
        shards=r"\d+",
    params:
        spec=lambda w: as_param(extraction_spec(config, w.dataset, w.backbone, w.view, w.split)),
        cache=lambda w: f"{RESULTS}/{w.dataset}/features/{w.backbone}/{w.view}/{w.split}.zarr",
    log:
        f"{RESULTS}/{{dataset}}/logs/extract_{{backbone}}_{{view}}_{{split}}_{{shard}}-of-{{shards}}.log",
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
    shell:
        "{NES} --threads {threads} extract --spec {params.spec:q} --cache {params.cache} "
        "--shard {wildcards.shard} {wildcards.shards} --out {output} 2> {log}"


rule gather_features:
    """The cache's manifest {split}.json, once every shard is complete: what later stages read."""
    input:
        shard_manifests,
    output:
        f"{RESULTS}/{{dataset}}/features/{{backbone}}/{{view}}/{{split}}.json",
    log:
        f"{RESULTS}/{{dataset}}/logs/gather_{{backbone}}_{{view}}_{{split}}.log",
    localrule: True
    shell:
        "{NES} gather --out {output} {input} 2> {log}"
