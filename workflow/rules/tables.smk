rule table:
    """One row per run (and CRF setting): results/{dataset}/{table}.csv and its Markdown twin."""
    input:
        lambda w: [f"{RESULTS}/{s['dataset']}/runs/{s['run']}/metrics.json" for s in table_runs(config, w.table)],
    output:
        csv=f"{RESULTS}/{{dataset}}/{{table}}.csv",
        md=f"{RESULTS}/{{dataset}}/{{table}}.md",
    wildcard_constraints:
        table="|".join(config["tables"]) or "none",
    log:
        f"{RESULTS}/{{dataset}}/logs/{{table}}.log",
    shell:
        "{NES} table --out {output.csv} {input} > /dev/null 2> {log}"
