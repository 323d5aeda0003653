# Positive and negative controls of the measurements (`snakemake validation`): simulated
# embeddings with known sources, no plates needed.


rule validation_controls:
    output:
        controls="<results>/validation/controls.tsv",
        checks="<results>/validation/checks.tsv",
    params:
        validation=canonical(config["validation"]),
    threads: rule_threads("validation_controls")
    resources:
        **rule_resources("validation_controls"),
    log:
        "<logs>/validation/controls.log",
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/validation_controls.py"


rule validation:
    input:
        rules.validation_controls.output,
    default_target: False
