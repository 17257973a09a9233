def evaluation(w):
    return evaluation_spec(config, RUNS[(w.dataset, w.run)], w.evaluation)


def kmeans_twin(w):
    """The K-means run of the same backbone, K and seed, when a table has it: its sample
    predictions join this run's report."""
    spec = RUNS[(w.dataset, w.run)]
    twin = f"kmeans-{spec['backbone']}-K{spec['train']['K']}-s{spec['seed']}"
    if spec["method"] == "kmeans" or (w.dataset, twin) not in RUNS:
        return None
    return f"{RESULTS}/{w.dataset}/runs/{twin}/{w.evaluation}"


rule evaluate:
    """Scores of one run on {evaluation} = {dataset}-{protocol}, overlay panels and a report.
    Cached features for single-pass protocols; the backbone runs live for sliding windows."""
    input:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
        features=lambda w: [evaluation(w)["features"]] if evaluation(w)["features"] else [],
        twin=lambda w: [f"{kmeans_twin(w)}/metrics.json"] if kmeans_twin(w) else [],
    output:
        metrics=f"{RESULTS}/{{dataset}}/runs/{{run}}/{{evaluation}}/metrics.json",
        overlays=report(directory(f"{RESULTS}/{{dataset}}/runs/{{run}}/{{evaluation}}/overlays"), patterns=["{name}.png"],
                        category="{dataset}", subcategory="{run}", labels={"figure": "overlay {name}"}),
        report=f"{RESULTS}/{{dataset}}/runs/{{run}}/{{evaluation}}/report.md",
        per_class=report(f"{RESULTS}/{{dataset}}/runs/{{run}}/{{evaluation}}/per_class_iou.png",
                         category="{dataset}", subcategory="{run}", labels={"figure": "per-class IoU ({evaluation})"}),
        confusion=report(f"{RESULTS}/{{dataset}}/runs/{{run}}/{{evaluation}}/confusion.png",
                         category="{dataset}", subcategory="{run}", labels={"figure": "confusion ({evaluation})"}),
        samples=report(f"{RESULTS}/{{dataset}}/runs/{{run}}/{{evaluation}}/samples.png",
                       category="{dataset}", subcategory="{run}", labels={"figure": "samples ({evaluation})"}),
    params:
        spec=lambda w: as_param(evaluation(w)),
        run_dir=lambda w: run_dir(config, RUNS[(w.dataset, w.run)]),
        compare=lambda w: f"--compare {kmeans_twin(w)}" if kmeans_twin(w) else "",
    log:
        f"{RESULTS}/{{dataset}}/logs/evaluate_{{run}}_{{evaluation}}.log",
    threads: 2
    resources:
        mem_mb=8000,
        gpu=lambda w: 0 if evaluation(w)["features"] else 1,
    shell:
        "{NES} --threads {threads} evaluate --run {params.run_dir} --spec {params.spec:q} "
        "--overlays-dir {output.overlays} --out {output.metrics} --report {params.compare} > /dev/null 2> {log}"
