"""The Train dock's Advanced augmentation fields: probabilities into the config, 3D-only ones hidden in 2D."""


def test_train_dock_sets_the_probabilities_and_hides_the_3d_only_ones_in_2d(make_napari_viewer):
    from napari_bioflow.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    f = widget.form
    assert f["ndim"].value == 2
    assert f["augment.misalignment_prob"].native.isHidden() and f["augment.missing_sections_prob"].native.isHidden()
    f["augment.random_rot_prob"].value, f["augment.elastic_prob"].value = 0.5, 0.25
    cfg = widget.build_config()
    assert (cfg.augment.random_rot_prob, cfg.augment.elastic_prob, cfg.augment.misalignment_prob) == (0.5, 0.25, 0.0)
    f["ndim"].value = 3
    assert not f["augment.misalignment_prob"].native.isHidden()
    f["augment.misalignment_prob"].value = 0.3
    assert widget.build_config().augment.misalignment_prob == 0.3
    f["ndim"].value = 2  # hidden again, and 0: the 2D config stays valid
    assert f["augment.misalignment_prob"].native.isHidden()
    assert widget.build_config().augment.misalignment_prob == 0.0
