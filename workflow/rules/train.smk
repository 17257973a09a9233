def run_spec(w):
    return RUNS[(w.dataset, w.run)]


rule train:
    """psi by the NeuralEF objective on per-batch kernels (or batches of the dataset-wide graph)."""
    input:
        features=lambda w: run_spec(w)["features"],
        graph=lambda w: [run_spec(w)["graph"]] if "graph" in run_spec(w) else [],
        heldout=lambda w: [run_spec(w)["heldout"]] if run_spec(w).get("heldout") else [],
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
    if spec["method"] == "spectral_inductive":
        return {"eigen": spec["eigen"]["path"], "graph": spec["eigen"]["graph"], "nystrom": spec["nystrom"]["path"]}
    inputs = {"features": spec["features"]}
    if spec["method"] == "nes_star":
        inputs["nes"] = f"{RESULTS}/{w.dataset}/runs/{spec['nes_run']}/model.pt"
    return inputs


rule fit_kmeans:
    """K centres on tokens: of the backbone's high-level features (kmeans, the baseline; on the
    evaluated split itself for kmeans_transductive, the control of spectral), of psi's hidden
    features (nes_star, the paper's Ours*) or of the row-normalised exact eigenvectors of the
    evaluated split's graph (spectral, the transductive reference) or of the training split's
    graph (spectral_inductive, labelling the evaluated split through the Nystrom extension)."""
    input:
        unpack(kmeans_inputs),
    output:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
    wildcard_constraints:
        run="(kmeans|kmeans_transductive|nes_star|spectral|spectral_inductive)-.+",
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
