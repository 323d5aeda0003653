# Settings and input functions of the gallery rule (gallery.smk); functions only, so that the
# rule file holds rules only.
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
