rule table:
    """results/{folder}/{table}.csv (mean and std over seeds), {table}_runs.csv (one row per run
    and CRF setting) and the Markdown twin {table}.md."""
    input:
        lambda w: table_metrics(config, w.folder, w.table),
    output:
        csv=f"{RESULTS}/{{folder}}/{{table}}.csv",
        runs=f"{RESULTS}/{{folder}}/{{table}}_runs.csv",
        md=f"{RESULTS}/{{folder}}/{{table}}.md",
    log:
        f"{RESULTS}/{{folder}}/logs/{{table}}.log",
    localrule: True
    shell:
        "{NES} table --out {output.csv} {input} > /dev/null 2> {log}"
