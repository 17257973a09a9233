rule table:
    """results/{folder}/{table}.csv (mean and std over seeds), {table}_runs.csv (one row per run
    and CRF setting) and the Markdown twin {table}.md; with every run's partition measures where
    the table has the spectral reference."""
    input:
        metrics=lambda w: table_metrics(config, w.folder, w.table),
        alignments=lambda w: table_alignments(config, w.folder, w.table),
    output:
        csv=report(
            f"{RESULTS}/{{folder}}/{{table}}.csv",
            caption="../report/table.rst",
            category="tables",
            labels={"table": "{folder}/{table}"},
        ),
        runs=f"{RESULTS}/{{folder}}/{{table}}_runs.csv",
        md=f"{RESULTS}/{{folder}}/{{table}}.md",
    log:
        f"{RESULTS}/{{folder}}/logs/{{table}}.log",
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
