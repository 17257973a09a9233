rule extract_features:
    """Backbone features, psi inputs and pixel vectors of one split into {split}.zarr; the
    manifest {split}.json is written only once the cache is complete (a rerun resumes)."""
    output:
        manifest=f"{RESULTS}/{{dataset}}/features/{{backbone}}/{{split}}.json",
    params:
        spec=lambda w: as_param(extraction_spec(config, w.dataset, w.backbone, w.split)),
    log:
        f"{RESULTS}/{{dataset}}/logs/extract_{{backbone}}_{{split}}.log",
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
    shell:
        "{NES} --threads {threads} extract --spec {params.spec:q} --out {output.manifest} 2> {log}"
