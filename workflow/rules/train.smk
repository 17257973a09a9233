def run_spec(w):
    return RUNS[(w.dataset, w.run)]


rule train:
    """psi by the NeuralEF objective on per-batch kernels (or batches of the dataset-wide graph)."""
    input:
        features=lambda w: run_spec(w)["features"],
        graph=lambda w: [run_spec(w)["graph"]] if "graph" in run_spec(w) else [],
    output:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
        log_csv=f"{RESULTS}/{{dataset}}/runs/{{run}}/train_log.csv",
        curves=f"{RESULTS}/{{dataset}}/runs/{{run}}/loss.png",
    wildcard_constraints:
        run="nes-.+",
    params:
        spec=lambda w: as_param(run_spec(w)),
        run_dir=lambda w: run_dir(config, run_spec(w)),
    log:
        f"{RESULTS}/{{dataset}}/logs/fit_{{run}}.log",
    threads: 2
    resources:
        mem_mb=12000,
        gpu=1,
    shell:
        "{NES} --threads {threads} fit --spec {params.spec:q} --run-dir {params.run_dir} 2> {log}"


def kmeans_inputs(w):
    """nes_star clusters psi's hidden features, so it also needs the nes run it builds on;
    spectral clusters the exact eigenvectors of the evaluated split."""
    spec = run_spec(w)
    if spec["method"] == "spectral":
        return {"eigen": spec["eigen"]["path"], "graph": spec["eigen"]["graph"]}
    inputs = {"features": spec["features"]}
    if spec["method"] == "nes_star":
        inputs["nes"] = f"{RESULTS}/{w.dataset}/runs/{spec['nes_run']}/model.pt"
    return inputs


rule fit_kmeans:
    """K centres on tokens: of the backbone's high-level features (kmeans, the baseline), of psi's
    hidden features (nes_star, the paper's Ours*) or of the row-normalised exact eigenvectors of
    the evaluated split's graph (spectral, the transductive reference)."""
    input:
        unpack(kmeans_inputs),
    output:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
    wildcard_constraints:
        run="(kmeans|nes_star|spectral)-.+",
    params:
        spec=lambda w: as_param(run_spec(w)),
        run_dir=lambda w: run_dir(config, run_spec(w)),
    log:
        f"{RESULTS}/{{dataset}}/logs/fit_{{run}}.log",
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "{NES} --threads {threads} fit --spec {params.spec:q} --run-dir {params.run_dir} 2> {log}"
