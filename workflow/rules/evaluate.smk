def evaluation(w):
    return evaluation_spec(config, RUNS[(w.dataset, w.run)], w.evaluation)


rule evaluate:
    """Scores of one run on {evaluation} = {dataset}-{protocol}, plus overlay panels. Cached
    features for single-pass protocols; the backbone runs live for sliding windows."""
    input:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
        features=lambda w: [evaluation(w)["features"]] if evaluation(w)["features"] else [],
    output:
        metrics=f"{RESULTS}/{{dataset}}/runs/{{run}}/{{evaluation}}/metrics.json",
        overlays=directory(f"{RESULTS}/{{dataset}}/runs/{{run}}/{{evaluation}}/overlays"),
    params:
        spec=lambda w: as_param(evaluation(w)),
        run_dir=lambda w: run_dir(config, RUNS[(w.dataset, w.run)]),
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate_{{run}}_{{evaluation}}.log",
    threads: 2
    resources:
        mem_mb=8000,
        gpu=lambda w: 0 if evaluation(w)["features"] else 1,
    shell:
        "{NES} --threads {threads} evaluate --run {params.run_dir} --spec {params.spec:q} "
        "--overlays-dir {output.overlays} --out {output.metrics} > /dev/null 2> {log}"
