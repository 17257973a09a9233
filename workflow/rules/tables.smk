rule table:
    """results/{folder}/{table}.csv (mean and std over seeds), {table}_runs.csv (one row per run
    and CRF setting), {table}_margins.csv (the verdict's margins with bootstrap intervals over
    images, from the per-image counts beside each metrics.json) and the Markdown twin
    {table}.md; with every run's partition measures where the table has the spectral reference.
    """
    input:
        metrics=lambda w: table_metrics(config, w.folder, w.table),
        alignments=lambda w: table_alignments(config, w.folder, w.table),
        counts=lambda w: table_counts(config, w.folder, w.table),
    output:
        csv=report(
            path(paths.TABLE),
            caption="../report/table.rst",
            category="tables",
            labels={"table": "{folder}/{table}"},
        ),
        runs=path(paths.TABLE_RUNS),
        md=path(paths.TABLE_MARKDOWN),
        margins=path(paths.TABLE_MARGINS),
    log:
        path(paths.LOG, dataset="{folder}", name="{table}"),
    localrule: True
    conda:
        ENV
    params:
        # the inputs listed in a file (a table can have hundreds); the inputs decide reruns
        inputs=lambda w, input: spec_file(
            {"metrics": list(input.metrics), "alignments": list(input.alignments)}
        ),
    shell:
        f"{NES} table --out {{output.csv:q}} --inputs {{params.inputs:q}} > /dev/null"
