"""BioImage Model Zoo packages: export a checkpoint (exporter), and open a package as a checkpoint (package).

The export needs bioimageio.spec / bioimageio.core (the `bmz` extra); opening a package napari-bioflow exported
needs neither."""
