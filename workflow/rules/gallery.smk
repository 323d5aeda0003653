# Component galleries (config section gallery): per method, the sites at both extremes of its most
# biological and most batch-attributed components (image sources) or their top loading features
# (profiles), with an attribution map naming them. In the report: one subcategory per method.


def _check_gallery_channels():
    """Channel names in gallery.channel_colors must be channels (checked at the dry run)."""
    from phenoica.errors import ConfigError

    unknown = sorted(set(config["gallery"]["channel_colors"]) - set(CHANNEL_NAMES))
    if unknown and SOURCE != "profiles":
        raise ConfigError(
            f"config key gallery.channel_colors: {unknown} are not channels "
            f"(config key channels: {CHANNEL_NAMES})"
        )


_check_gallery_channels()
GALLERY_METHODS = [m for m in METHODS if m in config["gallery"]["methods"]]
GALLERY_ROOT = "<results>/report/{model}/gallery"
# the keyword arguments of run_component_gallery (the section without its workflow-only keys)
GALLERY_SETTINGS = section_arguments("gallery", config["gallery"])
GALLERY_FIGURES = expand(
    f"{GALLERY_ROOT}/{{method}}", model=MODEL, method=GALLERY_METHODS
)


def gallery_images(wildcards):
    """The plate manifests (image sources) or the wells AnnData naming the features (profiles)."""
    if SOURCE == "profiles":
        return {"wells": f"{RESULTS}/embeddings/{wildcards.model}/wells.h5ad"}
    return {
        "manifests": expand(
            "{results}/plates/{plate}/manifest.parquet", results=RESULTS, plate=PLATES
        )
    }


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
