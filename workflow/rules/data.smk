rule download_camvid:
    """CamVid from the SegNet tutorial's public repository into data/camvid (needs internet)."""
    output:
        directory("data/camvid"),
    log:
        "results/logs/download_camvid.log",
    shell:
        "{NES} download camvid --dest {output} 2> {log}"
