# Component galleries (config section gallery): per method, the sites at both extremes of its most
# biological and most batch-attributed components (image sources) or their top loading features
# (profiles), with an attribution map naming them. In the report: one subcategory per method.
include: "gallery_common.smk"


rule component_gallery:
    input:
        unpack(gallery_images),
        adata="<results>/postprocess/{model}/{method}.h5ad",
        scores="<results>/scores/{model}/{method}.tsv",
    output:
        folder=report(
            directory(f"{GALLERY_ROOT}/{{method}}"),
            patterns=["{name}.png"],
            caption="../report/gallery.rst",
            category="4. Component galleries",
            subcategory="{method}",
            labels={"figure": "{name}"},
        ),
    log:
        "<logs>/report/{model}/gallery_{method}.log",
    conda:
        "../../envs/core.yaml"
    threads: rule_threads("component_gallery")
    resources:
        **rule_resources("component_gallery"),
    params:
        gallery=canonical(GALLERY_SETTINGS),
        channels=canonical(CHANNEL_NAMES),
        seed=canonical(SEED),
    script:
        "../scripts/component_gallery.py"
