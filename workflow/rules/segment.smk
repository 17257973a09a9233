def segmentation_for(w):
    """The `segmentations` entry that asked for this run (its split and eigenfunction maps)."""
    for name in config.get("segmentations") or {}:
        if f"{RESULTS}/{w.dataset}/runs/{w.run}/segment" in segmentation_outputs(config, name):
            return segmentation_config(config, name)
    raise ValueError(f"no segmentations entry asks for run {w.run} of {w.dataset}")


rule segment_images:
    """Label PNGs (class ids when the run has been evaluated, cluster ids otherwise), overlays with
    a legend and eigenfunction heat maps for every image of a split: no labels needed."""
    input:
        model=f"{RESULTS}/{{dataset}}/runs/{{run}}/model.pt",
    output:
        directory(f"{RESULTS}/{{dataset}}/runs/{{run}}/segment"),
    params:
        dataset=lambda w: as_param(source_spec(config, w.dataset)),
        split=lambda w: segmentation_for(w)["split"],
        eigenfunctions=lambda w: segmentation_for(w).get("eigenfunctions", 0) if w.run.startswith("nes-") else 0,
        run_dir=lambda w: f"{RESULTS}/{w.dataset}/runs/{w.run}",
    log:
        f"{RESULTS}/{{dataset}}/logs/segment_{{run}}.log",
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
    shell:
        "{NES} --threads {threads} segment --run {params.run_dir} --out {output} --dataset {params.dataset:q} "
        "--split {params.split} --eigenfunctions {params.eigenfunctions} > /dev/null 2> {log}"
