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
