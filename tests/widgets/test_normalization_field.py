"""The Train dock's normalization and intensity jitter follow the workflow's defaults (meanstd and no jitter for
image to image, issue 14) until the user picks a value; a value the user chose, or a loaded config's, stays when the
workflow changes."""

from napari_bioflow.widgets.train import TrainWidget


def test_normalization_follows_the_workflow_until_chosen(make_napari_viewer):
    train = TrainWidget(make_napari_viewer())
    field = train.form["data.normalization"]
    assert train.workflow == "semantic_segmentation" and field.value == "percentile"
    train.form["workflow"].value = "image_to_image"
    assert field.value == "meanstd" and train.form["data.percentile_low"].native.isHidden()
    assert train.build_config().data.normalization == "meanstd"
    train.form["workflow"].value = "semantic_segmentation"
    assert field.value == "percentile"
    assert not train.form["data.percentile_low"].native.isHidden()  # percentile's own fields follow

    field.value = "none"  # the user's choice
    train.form["workflow"].value = "image_to_image"
    assert field.value == "none"
    assert train.build_config().data.normalization == "none"


def test_a_chosen_percentile_is_kept_for_image_to_image(make_napari_viewer):
    train = TrainWidget(make_napari_viewer())
    train.form["workflow"].value = "image_to_image"
    train.form["data.normalization"].value = "percentile"
    train.form["workflow"].value = "semantic_segmentation"
    train.form["workflow"].value = "image_to_image"
    assert train.form["data.normalization"].value == "percentile"
    assert train.build_config().data.normalization == "percentile"


def test_a_loaded_config_keeps_its_normalization(make_napari_viewer, tmp_path):
    train = TrainWidget(make_napari_viewer())
    path = tmp_path / "run.yaml"
    path.write_text("workflow: image_to_image\ndata:\n  normalization: percentile\n")
    train.load_config(path)
    assert train.form["data.normalization"].value == "percentile"
    train.form["workflow"].value = "semantic_segmentation"
    train.form["workflow"].value = "image_to_image"
    assert train.form["data.normalization"].value == "percentile"


def test_intensity_jitter_follows_the_workflow_until_chosen(make_napari_viewer):
    train = TrainWidget(make_napari_viewer())
    jitter = train.form["augment.intensity"]
    assert train.followed_fields() == ["augment.intensity", "data.normalization", "train.learning_rate"]
    assert jitter.value == 0.1
    train.form["workflow"].value = "image_to_image"
    assert jitter.value == 0.0 and train.build_config().augment.intensity == 0.0
    train.form["workflow"].value = "semantic_segmentation"
    assert jitter.value == 0.1 and train.build_config().augment.intensity == 0.1
    train.form["workflow"].value = "image_to_image"
    jitter.value = 0.25  # the user's choice, kept; the normalization still follows
    train.form["workflow"].value = "classification"
    assert jitter.value == 0.25 and train.form["data.normalization"].value == "percentile"
    assert train.build_config().augment.intensity == 0.25


def test_learning_rate_follows_the_workflow_until_chosen(make_napari_viewer):
    """Classification starts at 1e-4, the dense workflows at 1e-3 (issue 14); a rate the user typed stays."""
    train = TrainWidget(make_napari_viewer())
    rate = train.form["train.learning_rate"]
    assert float(rate.value) == 1e-3
    train.form["workflow"].value = "classification"
    assert float(rate.value) == 1e-4 and train.build_config().train.learning_rate == 1e-4
    train.form["workflow"].value = "image_to_image"
    assert float(rate.value) == 1e-3 and train.build_config().train.learning_rate == 1e-3
    rate.value = 5e-4  # the user's choice
    train.form["workflow"].value = "classification"
    assert float(rate.value) == 5e-4 and train.build_config().train.learning_rate == 5e-4
