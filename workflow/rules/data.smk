rule download_camvid:
    """CamVid from the SegNet tutorial's public repository into data/camvid (needs internet: runs
    on the submitting machine, not on a cluster node)."""
    output:
        directory("data/camvid"),
    log:
        "results/logs/download_camvid.log",
    localrule: True
    conda:
        ENV
    shell:
        f"{NES} download camvid --dest {{output:q}}"
