# Positive and negative controls of the measurements (`snakemake validation`): simulated
# embeddings with known sources, no plates needed.


rule validation_controls:
    output:
        controls="<results>/validation/controls.tsv",
        checks="<results>/validation/checks.tsv",
    log:
        "<logs>/validation/controls.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("validation_controls")
    resources:
        **rule_resources("validation_controls"),
    params:
        validation=canonical(config["validation"]),
    script:
        "../scripts/validation_controls.py"


rule validation:
    default_target: False
    input:
        rules.validation_controls.output,
