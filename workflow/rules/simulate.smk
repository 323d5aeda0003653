# Built-in demo data: simulated plates with known biology and batch effects.


rule simulate_design:
    output:
        design=f"{SIM_ROOT}/design.tsv",
        relations=f"{SIM_ROOT}/relations.tsv",
    log:
        "<logs>/simulate/design.log",
    conda:
        "../../envs/core.yaml"
    params:
        sim=canonical(config["simulate"]["params"]),
        seed=canonical(SEED),
    script:
        "../scripts/simulate_design.py"


rule simulate_plate:
    output:
        images=directory(f"{SIM_ROOT}/images/{{plate}}"),
        platemap=f"{SIM_ROOT}/platemaps/{{plate}}.csv",
        truth=f"{SIM_ROOT}/truth/{{plate}}.tsv",
    log:
        "<logs>/simulate/{plate}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("simulate_plate")
    resources:
        **rule_resources("simulate_plate"),
    params:
        batch=lambda wildcards: canonical(plate_row(wildcards.plate)["batch"]),
        sim=canonical(config["simulate"]["params"]),
        seed=canonical(SEED),
    script:
        "../scripts/simulate_plate.py"
