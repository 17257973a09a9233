rule table:
    """results/{folder}/{table}.csv (mean and std over seeds), {table}_runs.csv (one row per run
    and CRF setting) and the Markdown twin {table}.md; with the eigen-alignment of psi where the
    table has the spectral reference."""
    input:
        metrics=lambda w: table_metrics(config, w.folder, w.table),
        alignments=lambda w: table_alignments(config, w.folder, w.table),
    output:
        csv=f"{RESULTS}/{{folder}}/{{table}}.csv",
        runs=f"{RESULTS}/{{folder}}/{{table}}_runs.csv",
        md=f"{RESULTS}/{{folder}}/{{table}}.md",
    log:
        f"{RESULTS}/{{folder}}/logs/{{table}}.log",
    localrule: True
    shell:
        "{NES} table --out {output.csv} --alignments {input.alignments} -- {input.metrics} > /dev/null 2> {log}"
