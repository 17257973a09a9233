def eval_features(w):
    spec = RUNS[(w.dataset, w.run)]
    return features_path(config, w.dataset, spec["backbone"], spec["dataset_spec"]["eval_split"])


rule evaluate:
    """Scores of one run on the dataset's evaluation split, plus overlay panels."""
    input:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
        features=eval_features,
    output:
        metrics=f"{RESULTS}/{{dataset}}/runs/{{run}}/metrics.json",
        overlays=directory(f"{RESULTS}/{{dataset}}/runs/{{run}}/overlays"),
    params:
        split=lambda w: RUNS[(w.dataset, w.run)]["dataset_spec"]["eval_split"],
        crf="--crf" if config["evaluate"]["crf"] else "",
        overlays=config["evaluate"]["overlays"],
        run_dir=lambda w: f"{RESULTS}/{w.dataset}/runs/{w.run}",
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate_{{run}}.log",
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "{NES} --threads {threads} evaluate --run {params.run_dir} --features {input.features} "
        "--split {params.split} {params.crf} --overlays {params.overlays} --overlays-dir {output.overlays} "
        "--out {output.metrics} > /dev/null 2> {log}"
