def run_spec(w):
    return RUNS[(w.dataset, w.run)]


rule train:
    """psi by the NeuralEF objective on per-batch kernels."""
    input:
        features=lambda w: run_spec(w)["features"],
    output:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
        log_csv=f"{RESULTS}/{{dataset}}/runs/{{run}}/train_log.csv",
        curves=f"{RESULTS}/{{dataset}}/runs/{{run}}/loss.png",
    wildcard_constraints:
        run="nes-.+",
    params:
        spec=lambda w: as_param(run_spec(w)),
        run_dir=lambda w: f"{RESULTS}/{w.dataset}/runs/{w.run}",
    log:
        f"{RESULTS}/{{dataset}}/logs/fit_{{run}}.log",
    threads: 2
    resources:
        mem_mb=12000,
        gpu=1,
    shell:
        "{NES} --threads {threads} fit --spec {params.spec:q} --run-dir {params.run_dir} 2> {log}"


rule fit_kmeans:
    """K-means baseline: K centres on the training tokens' high-level features."""
    input:
        features=lambda w: run_spec(w)["features"],
    output:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
    wildcard_constraints:
        run="kmeans-.+",
    params:
        spec=lambda w: as_param(run_spec(w)),
        run_dir=lambda w: f"{RESULTS}/{w.dataset}/runs/{w.run}",
    log:
        f"{RESULTS}/{{dataset}}/logs/fit_{{run}}.log",
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "{NES} --threads {threads} fit --spec {params.spec:q} --run-dir {params.run_dir} 2> {log}"


rule fit_nes_star:
    """Ours*: K-means on psi's hidden features of the training tokens."""
    input:
        features=lambda w: run_spec(w)["features"],
        nes=lambda w: f"{RESULTS}/{w.dataset}/runs/{run_spec(w)['nes_run']}/model.pt",
    output:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
    wildcard_constraints:
        run="nes_star-.+",
    params:
        spec=lambda w: as_param(run_spec(w)),
        run_dir=lambda w: f"{RESULTS}/{w.dataset}/runs/{w.run}",
    log:
        f"{RESULTS}/{{dataset}}/logs/fit_{{run}}.log",
    threads: 2
    resources:
        mem_mb=8000,
    shell:
        "{NES} --threads {threads} fit --spec {params.spec:q} --run-dir {params.run_dir} 2> {log}"
